//! Snapshots: the migration stream written to a file with the guest
//! paused, full or as a diff of the pages written since the snapshot
//! before it (the write-watch layer tells which), and restoring a chain of
//! them into a new VMM.
//!
//! After each snapshot a write-watch consumer, clean at the pause, keeps
//! collecting writes for the next diff. Each file names its id and, for a
//! diff, the id it follows, so a chain applied out of order or with a gap
//! is refused.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::hash::PieceHashes;
use super::ram;
use super::receive::{self, ReceiveError};
use super::stream::{
    End, Header, Kind, MAX_PAGES_PER_FRAME, PAGE, Reader, SnapshotIds, VERSION, Writer,
};
use crate::builder::{self, Machine};
use crate::config::VmConfig;
use crate::dirty::bitmap::PageBitmap;
use crate::dirty::{ConsumerId, Initial, WatchError};
use crate::output::Sink;
use crate::runner::{ControlError, VmHandle, VmState};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("there is no snapshot to diff against: take a full one first (without --diff)")]
    NoBase,
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{0}")]
    Memory(String),
}

/// The chain of snapshots a VM has taken.
#[derive(Default)]
pub struct Chain {
    last_id: Option<String>,
    /// Collects the pages written since the last snapshot.
    consumer: Option<ConsumerId>,
    /// The RAM hash of the last snapshot, by piece: a diff rehashes only
    /// the pieces it writes.
    hashes: Option<PieceHashes>,
}

/// What a snapshot that succeeded changes in its chain. Until it has
/// succeeded nothing changes, so a failed snapshot loses no written page
/// from the next diff.
struct Next {
    /// The consumer collecting pages from this pause on: the chain's own
    /// (diff), or one opened for this full snapshot.
    consumer: ConsumerId,
    opened: bool,
    hashes: PieceHashes,
    id: String,
}

/// What taking a snapshot did.
#[derive(Clone, Debug, Serialize)]
pub struct Taken {
    pub path: String,
    pub id: String,
    pub base: Option<String>,
    pub pages: u64,
    pub zero_pages: u64,
    pub bytes: u64,
    /// How long the guest was paused.
    pub paused_ms: f64,
    pub ram_hash: String,
}

fn new_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!("{now}-{}", std::process::id());
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(seed.as_bytes()))
}

/// Writes a snapshot of `vm` to `path`: everything, or with `diff` the
/// pages written since the last snapshot. The guest is paused meanwhile
/// (and resumed after, unless it was paused before).
pub fn take(
    vm: &VmHandle,
    path: &Path,
    diff: bool,
    chain: &Mutex<Chain>,
) -> Result<Taken, SnapshotError> {
    let mut chain = chain.lock().unwrap_or_else(|e| e.into_inner());
    let base = match (diff, &chain.last_id) {
        (true, None) => return Err(SnapshotError::NoBase),
        (true, Some(id)) => Some(id.clone()),
        (false, _) => None,
    };
    let shown = path.display().to_string();
    let file_error = |why: String| SnapshotError::File {
        path: shown.clone(),
        why,
    };
    let partial = PathBuf::from(format!("{shown}.partial"));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .map_err(|e| file_error(format!("cannot create {}: {e}", partial.display())))?;
    if path.exists() {
        let _ = fs::remove_file(&partial);
        return Err(file_error(
            "the file exists (remove it, or choose another)".into(),
        ));
    }
    let was_paused = vm.status()?.state == VmState::Paused;
    if !was_paused {
        vm.pause()?;
    }
    let paused = Instant::now();
    let ww = vm.write_watch();
    let result = write(vm, file, diff, base.clone(), &chain).and_then(|(taken, next)| {
        match fs::rename(&partial, path) {
            Ok(()) => Ok((taken, next)),
            Err(e) => {
                if next.opened {
                    ww.close_consumer(next.consumer);
                }
                Err(file_error(format!("cannot rename: {e}")))
            }
        }
    });
    // Still paused: the consumer starts clean from this pause.
    let result = result.and_then(|(taken, next)| {
        if next.opened {
            if let Some(old) = chain.consumer.replace(next.consumer) {
                ww.close_consumer(old);
            }
        }
        ww.take_consumer(next.consumer)?;
        chain.hashes = Some(next.hashes);
        chain.last_id = Some(next.id);
        Ok(taken)
    });
    if !was_paused {
        let _ = vm.resume();
    }
    let paused_ms = paused.elapsed().as_secs_f64() * 1e3;
    match result {
        Ok(mut taken) => {
            taken.path = shown;
            taken.paused_ms = paused_ms;
            Ok(taken)
        }
        Err(e) => {
            let _ = fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Writes the snapshot of the paused guest to `file`; the chain is left
/// as it was (`take` applies `Next` once the file is in place).
fn write(
    vm: &VmHandle,
    file: File,
    diff: bool,
    base: Option<String>,
    chain: &Chain,
) -> Result<(Taken, Next), SnapshotError> {
    let ww = vm.write_watch();
    // The pages to write: for a diff what the chain's consumer holds (read,
    // not taken), for a full snapshot every page, through a new consumer.
    let (consumer, opened) = if diff {
        (chain.consumer.ok_or(SnapshotError::NoBase)?, false)
    } else {
        if ww.tracking_source().is_none() {
            ww.start(ww.available_source(), Initial::Clean)?;
        }
        (ww.open_consumer(true)?, true)
    };
    let result = write_pages(vm, file, diff, base, chain, consumer);
    match result {
        Ok((taken, hashes)) => {
            let id = taken.id.clone();
            Ok((
                taken,
                Next {
                    consumer,
                    opened,
                    hashes,
                    id,
                },
            ))
        }
        Err(e) => {
            if opened {
                ww.close_consumer(consumer);
            }
            Err(e)
        }
    }
}

fn write_pages(
    vm: &VmHandle,
    file: File,
    diff: bool,
    base: Option<String>,
    chain: &Chain,
    consumer: ConsumerId,
) -> Result<(Taken, PieceHashes), SnapshotError> {
    let ww = vm.write_watch();
    let io = |e: std::io::Error| SnapshotError::Memory(format!("writing the snapshot: {e}"));
    let pages: Vec<PageBitmap> = ww.peek_consumer(consumer)?;
    let ranges = ww.ram_ranges();
    let id = new_id();
    let header = Header {
        version: VERSION,
        purpose: "snapshot".into(),
        vcpus: vm.status()?.vcpus as u32,
        mem_bytes: ww.ram_bytes(),
        ram: ranges.iter().map(|&(s, l)| [s, l]).collect(),
        writer: format!("writewatch {}", env!("CARGO_PKG_VERSION")),
        snapshot: Some(SnapshotIds {
            id: id.clone(),
            base: base.clone(),
        }),
        ram_hash: true,
    };
    let mut out = Writer::start(BufWriter::with_capacity(1 << 20, file), &header).map_err(io)?;
    let mem = vm.memory();
    let (mut sent, mut zero_pages) = (0u64, 0u64);
    let mut buf = vec![0u8; MAX_PAGES_PER_FRAME as usize * PAGE];
    let (mut pagemap, mut populated) = (ram::Populated::new(), Vec::new());
    let mut zeros = Vec::new();
    for (bitmap, &(start, _)) in pages.iter().zip(&ranges) {
        for (first, count) in bitmap.runs() {
            let mut page = first;
            while page < first + count {
                let n = (first + count - page).min(u64::from(MAX_PAGES_PER_FRAME)) as usize;
                let gpa = start + page * PAGE as u64;
                ram::read_populated(mem, gpa, &mut buf[..n * PAGE], &mut pagemap, &mut populated)
                    .map_err(SnapshotError::Memory)?;
                for (i, data) in buf[..n * PAGE].chunks(PAGE).enumerate() {
                    let at = gpa + (i * PAGE) as u64;
                    if !populated[i] || ram::is_zero(data) {
                        zero_pages += 1;
                        // A full snapshot restores into zeroed RAM.
                        if diff {
                            zeros.push((at, 1));
                            if zeros.len() == MAX_PAGES_PER_FRAME as usize {
                                out.zeros(&zeros).map_err(io)?;
                                zeros.clear();
                            }
                        }
                    } else {
                        out.pages(at, data).map_err(io)?;
                        sent += 1;
                    }
                }
                page += n as u64;
            }
        }
    }
    if !zeros.is_empty() {
        out.zeros(&zeros).map_err(io)?;
    }
    let state = vm.save_state()?;
    out.json(Kind::State, &state).map_err(io)?;
    // A diff's hash: the last snapshot's pieces, those it writes hashed again.
    let mut hashes = match (diff, &chain.hashes) {
        (true, Some(last)) => last.clone(),
        _ => PieceHashes::new(mem),
    };
    for (bitmap, &(start, _)) in pages.iter().zip(&ranges) {
        for (first, count) in bitmap.runs() {
            for i in hashes.pieces_of(start + first * PAGE as u64, count * PAGE as u64) {
                hashes.forget(i);
            }
        }
    }
    hashes.fill(mem, 2, &AtomicBool::new(false));
    let ram_hash = hashes.digest().expect("every piece was hashed");
    out.json(
        Kind::End,
        &End {
            ram_hash: Some(ram_hash.clone()),
            pages_sent: sent,
            rounds: 1,
            paused_unix_ns: 0,
            hash_ms: 0.0,
        },
    )
    .map_err(io)?;
    out.flush().map_err(io)?;
    let bytes = out.bytes;
    out.into_inner()
        .into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    Ok((
        Taken {
            path: String::new(),
            id,
            base,
            pages: sent,
            zero_pages,
            bytes,
            paused_ms: 0.0,
            ram_hash,
        },
        hashes,
    ))
}

/// What restoring a chain did.
#[derive(Clone, Debug, Serialize)]
pub struct Restored {
    pub files: Vec<String>,
    pub pages: u64,
    pub ms: f64,
}

/// Builds a machine from a full snapshot and the diffs that follow it, in
/// order; checks the chain and the RAM hash; restores the machine state of
/// the last one.
pub fn restore(
    files: &[PathBuf],
    local: &VmConfig,
    stdout: Arc<Sink>,
) -> Result<(Machine, Restored), ReceiveError> {
    let began = Instant::now();
    let mut machine: Option<Machine> = None;
    let mut first: Option<Header> = None;
    let mut previous: Option<String> = None;
    let mut last: Option<(End, super::state::MachineState)> = None;
    let mut pages = 0;
    for path in files {
        let shown = path.display().to_string();
        let in_file = |e: ReceiveError| ReceiveError::Bad(format!("{shown}: {e}"));
        let bad = |why: String| in_file(ReceiveError::Bad(why));
        let file = File::open(path).map_err(|e| bad(e.to_string()))?;
        let (mut reader, header) = Reader::start(BufReader::with_capacity(1 << 20, file))
            .map_err(|e| in_file(e.into()))?;
        let ids = match (&header.snapshot, header.purpose.as_str()) {
            (Some(ids), "snapshot") => ids.clone(),
            _ => return Err(bad(format!("a {} stream, not a snapshot", header.purpose))),
        };
        match (&ids.base, &previous, &first) {
            (None, None, _) => {
                receive::check_header(&header).map_err(in_file)?;
                let config = receive::config_for(&header, local);
                machine = Some(builder::build_for_restore(&config, stdout.clone())?);
                first = Some(header.clone());
            }
            (Some(base), None, _) => {
                return Err(bad(format!(
                    "a diff of snapshot {base}: give its full snapshot first"
                )));
            }
            (None, Some(_), _) => {
                return Err(bad(
                    "a full snapshot: only diffs may follow the first file".into()
                ));
            }
            (Some(base), Some(prev), Some(first)) => {
                if base != prev {
                    return Err(bad(format!(
                        "a diff of snapshot {base}, but the file before it is snapshot {prev}"
                    )));
                }
                if header.vcpus != first.vcpus || header.ram != first.ram {
                    return Err(bad("a diff of a machine of another shape".into()));
                }
            }
            (Some(_), Some(_), None) => unreachable!("a first file was read"),
        }
        let m = machine.as_ref().expect("built from the first file");
        let applied =
            receive::apply(&mut reader, &m.memory, &header, true, &|_, _| {}).map_err(in_file)?;
        receive::expect_eof(&mut reader).map_err(in_file)?;
        pages += applied.pages;
        let state = applied.state.expect("apply checked the state came");
        last = Some((applied.end, state));
        previous = Some(ids.id);
    }
    let mut machine = machine.ok_or_else(|| ReceiveError::Bad("no snapshot given".into()))?;
    let (end, state) = last.expect("at least one file");
    receive::verify_hash(&machine, &end, None)?;
    receive::restore(&mut machine, &state)?;
    Ok((
        machine,
        Restored {
            files: files.iter().map(|p| p.display().to_string()).collect(),
            pages,
            ms: began.elapsed().as_secs_f64() * 1e3,
        },
    ))
}
