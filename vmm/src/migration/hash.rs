//! The RAM hash both ends of a migration compare (and snapshots carry):
//! xxh3-128 over 2 MiB pieces, then over the pieces' digests in address
//! order. Kept piece by piece, so that inside the pause only the pieces
//! written since they were hashed are hashed again: on the source the
//! write-watch layer says which (a consumer of its own, opened before the
//! first piece is hashed), on the destination the receiver marks the
//! pieces it writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use xxhash_rust::xxh3::xxh3_128;

use super::ram::{Populated, read_populated};
use crate::dirty::{ConsumerId, WatchError, WriteWatch};
use crate::memory::GuestMemoryMmap;
use crate::migration::stream::PAGE;

/// Bytes hashed per piece. Small enough that a pause rehashes little
/// beyond the pages written since.
const HASH_PIECE: usize = 2 << 20;

/// The xxh3-128 of all guest RAM, slot by slot in address order, as hex.
/// The vCPUs must be paused (the guest must not be writing). Two threads
/// share the work.
pub fn hash(mem: &GuestMemoryMmap) -> String {
    let mut pieces = PieceHashes::new(mem);
    pieces.fill(mem, 2, &AtomicBool::new(false));
    pieces.digest().expect("every piece was hashed")
}

/// The RAM hash, kept piece by piece so that a pause needs to hash again
/// only the pieces written since they were hashed (the rest was hashed
/// while the guest ran, or while the stream arrived). The digest is the
/// xxh3-128 of the pieces' xxh3-128s, in address order.
#[derive(Clone)]
pub struct PieceHashes {
    /// `(gpa, len)` of each piece, in address order.
    pieces: Vec<(u64, usize)>,
    digests: Vec<Option<u128>>,
}

impl PieceHashes {
    pub fn new(mem: &GuestMemoryMmap) -> Self {
        let mut pieces = Vec::new();
        for region in mem.iter() {
            let start = region.start_addr().0;
            let len = region.len();
            let mut at = 0;
            while at < len {
                let n = (len - at).min(HASH_PIECE as u64);
                pieces.push((start + at, n as usize));
                at += n;
            }
        }
        let digests = vec![None; pieces.len()];
        PieceHashes { pieces, digests }
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The pieces `[gpa, gpa + len)` overlaps.
    pub fn pieces_of(&self, gpa: u64, len: u64) -> std::ops::Range<usize> {
        let first = self
            .pieces
            .partition_point(|&(start, n)| start + n as u64 <= gpa);
        let end = self
            .pieces
            .partition_point(|&(start, _)| start < gpa.saturating_add(len));
        first..end.max(first)
    }

    /// Piece `i` changed since it was hashed.
    pub fn forget(&mut self, i: usize) {
        self.digests[i] = None;
    }

    /// Hashes piece `i` now.
    pub fn hash_one(&mut self, mem: &GuestMemoryMmap, i: usize, scratch: &mut Scratch) {
        self.digests[i] = Some(scratch.digest(mem, self.pieces[i]));
    }

    /// Hashes every piece that has no digest, on `threads` threads; stops
    /// early (leaving some without) once `stop` is set.
    pub fn fill(&mut self, mem: &GuestMemoryMmap, threads: usize, stop: &AtomicBool) {
        let missing: Vec<usize> = (0..self.pieces.len())
            .filter(|&i| self.digests[i].is_none())
            .collect();
        let threads = threads.clamp(1, missing.len().max(1));
        let pieces = &self.pieces;
        let results: Vec<Vec<(usize, u128)>> = std::thread::scope(|scope| {
            // Interleaved, so every thread gets written RAM wherever it is.
            let work = |part: usize| {
                let mut scratch = Scratch::new();
                let mut out = Vec::new();
                for &i in missing.iter().skip(part).step_by(threads) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    out.push((i, scratch.digest(mem, pieces[i])));
                }
                out
            };
            let helpers: Vec<_> = (1..threads)
                .map(|part| scope.spawn(move || work(part)))
                .collect();
            let mut all = vec![work(0)];
            all.extend(helpers.into_iter().map(|h| h.join().unwrap_or_default()));
            all
        });
        for (i, digest) in results.into_iter().flatten() {
            self.digests[i] = Some(digest);
        }
    }

    /// The hash of all RAM, if every piece has been hashed.
    pub fn digest(&self) -> Option<String> {
        let mut bytes = Vec::with_capacity(self.digests.len() * 16);
        for d in &self.digests {
            bytes.extend_from_slice(&(*d)?.to_le_bytes());
        }
        Some(format!("{:032x}", xxh3_128(&bytes)))
    }
}

/// One hashing thread's buffers.
pub struct Scratch {
    buf: Vec<u8>,
    pagemap: Populated,
    populated: Vec<bool>,
    zero_digest: Option<(usize, u128)>,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            buf: vec![0u8; HASH_PIECE],
            pagemap: Populated::new(),
            populated: Vec::new(),
            zero_digest: None,
        }
    }

    fn digest(&mut self, mem: &GuestMemoryMmap, (gpa, n): (u64, usize)) -> u128 {
        let buf = &mut self.buf[..n];
        // Unreadable RAM cannot happen for a slot's own range; if it did,
        // the hash would differ and the check fail.
        let _ = read_populated(mem, gpa, buf, &mut self.pagemap, &mut self.populated);
        if self.populated.iter().any(|&p| p) {
            return xxh3_128(buf);
        }
        // A piece never written: the same digest every time.
        match self.zero_digest {
            Some((len, digest)) if len == n => digest,
            _ => {
                let digest = xxh3_128(buf);
                self.zero_digest = Some((n, digest));
                digest
            }
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// The source's hash: a background pass over all pieces while pre-copy
/// runs, then, inside the pause, the pieces holding pages written since
/// that pass began.
pub struct SourceHasher<'a> {
    ww: &'a WriteWatch,
    /// Opened (clean) before the pass: every page written since.
    consumer: ConsumerId,
    stop: Arc<AtomicBool>,
    pass: Option<JoinHandle<PieceHashes>>,
}

impl<'a> SourceHasher<'a> {
    /// Starts the background pass. Tracking must be on.
    pub fn start(ww: &'a WriteWatch, mem: &GuestMemoryMmap) -> Result<Self, WatchError> {
        let consumer = ww.open_consumer(false)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (mem, stopping) = (mem.clone(), stop.clone());
        let pass = std::thread::Builder::new()
            .name("ram-hash".into())
            .spawn(move || {
                let mut pieces = PieceHashes::new(&mem);
                pieces.fill(&mem, 1, &stopping);
                pieces
            })
            .ok();
        Ok(SourceHasher {
            ww,
            consumer,
            stop,
            pass,
        })
    }

    /// The hash of RAM now. The guest must be paused.
    pub fn finish(mut self, mem: &GuestMemoryMmap) -> Result<String, WatchError> {
        self.stop.store(true, Ordering::Relaxed);
        let mut pieces = self
            .pass
            .take()
            .and_then(|p| p.join().ok())
            .unwrap_or_else(|| PieceHashes::new(mem));
        let (written, _) = self.ww.take_consumer(self.consumer)?;
        let ranges = self.ww.ram_ranges();
        for (bitmap, &(start, _)) in written.iter().zip(&ranges) {
            for (first, count) in bitmap.runs() {
                let gpa = start + first * PAGE as u64;
                for i in pieces.pieces_of(gpa, count * PAGE as u64) {
                    pieces.forget(i);
                }
            }
        }
        pieces.fill(mem, 2, &AtomicBool::new(false));
        Ok(pieces.digest().expect("every piece was hashed"))
    }
}

impl Drop for SourceHasher<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(pass) = self.pass.take() {
            let _ = pass.join();
        }
        self.ww.close_consumer(self.consumer);
    }
}

/// The destination's hash: a thread hashes pieces as the stream fills
/// them, again whenever the receiver marks one written; inside the pause
/// only what it has not caught up with is left.
pub struct IncomingHasher {
    index: PieceHashes,
    /// Per piece: written since last hashed. Set after the write, cleared
    /// before the read, so a write during a read leaves it set.
    written: Arc<Vec<AtomicBool>>,
    stop: Arc<AtomicBool>,
    chase: Option<JoinHandle<PieceHashes>>,
}

/// How long the chasing thread sleeps when nothing is left to hash.
const CHASE_IDLE: Duration = Duration::from_millis(2);

impl IncomingHasher {
    pub fn start(mem: &GuestMemoryMmap) -> Self {
        let index = PieceHashes::new(mem);
        let written: Arc<Vec<AtomicBool>> =
            Arc::new((0..index.len()).map(|_| AtomicBool::new(true)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let (mem, marks, stopping) = (mem.clone(), written.clone(), stop.clone());
        let chase = std::thread::Builder::new()
            .name("ram-hash".into())
            .spawn(move || {
                let mut pieces = PieceHashes::new(&mem);
                let mut scratch = Scratch::new();
                while !stopping.load(Ordering::Relaxed) {
                    let mut hashed = false;
                    for (i, mark) in marks.iter().enumerate() {
                        if stopping.load(Ordering::Relaxed) {
                            break;
                        }
                        if mark.swap(false, Ordering::SeqCst) {
                            pieces.hash_one(&mem, i, &mut scratch);
                            hashed = true;
                        }
                    }
                    if !hashed {
                        std::thread::sleep(CHASE_IDLE);
                    }
                }
                pieces
            })
            .ok();
        IncomingHasher {
            index,
            written,
            stop,
            chase,
        }
    }

    /// The receiver wrote `[gpa, gpa + len)` (call after the write).
    pub fn wrote(&self, gpa: u64, len: u64) {
        for i in self.index.pieces_of(gpa, len) {
            self.written[i].store(true, Ordering::SeqCst);
        }
    }

    /// The hash of RAM now, once the stream has ended.
    pub fn finish(mut self, mem: &GuestMemoryMmap) -> String {
        self.stop.store(true, Ordering::Relaxed);
        let mut pieces = self
            .chase
            .take()
            .and_then(|c| c.join().ok())
            .unwrap_or_else(|| PieceHashes::new(mem));
        for (i, mark) in self.written.iter().enumerate() {
            if mark.load(Ordering::SeqCst) {
                pieces.forget(i);
            }
        }
        pieces.fill(mem, 2, &AtomicBool::new(false));
        pieces.digest().expect("every piece was hashed")
    }
}

impl Drop for IncomingHasher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(chase) = self.chase.take() {
            let _ = chase.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backing;
    use crate::memory::create_guest_memory;
    use crate::migration::ram::{write, zero};

    #[test]
    fn the_hash_sees_every_byte_and_zeroing_undoes_a_write() {
        let mem = create_guest_memory(64 << 20, Backing::Anon, 46).unwrap();
        let empty = hash(&mem);
        let last = (64 << 20) - 8;
        assert!(write(&mem, last, &[1]));
        assert_ne!(hash(&mem), empty);
        assert!(zero(&mem, last & !4095, 1));
        assert_eq!(hash(&mem), empty);
    }

    #[test]
    fn pieces_of_a_range_cover_it_across_slots() {
        // [0, 3G) and [4G, 4G + 64M): 1536 + 32 pieces of 2 MiB.
        let mem = create_guest_memory((3u64 << 30) + (64 << 20), Backing::Anon, 46).unwrap();
        let p = PieceHashes::new(&mem);
        assert_eq!(p.len(), 1536 + 32);
        assert_eq!(p.pieces_of(0, 4096), 0..1);
        assert_eq!(p.pieces_of((2 << 20) - 4096, 8192), 0..2);
        assert_eq!(p.pieces_of((3u64 << 30) - 4096, 4096), 1535..1536);
        assert_eq!(p.pieces_of(4u64 << 30, 4096), 1536..1537);
        assert_eq!(p.pieces_of(0, 1 << 40), 0..1568);
    }

    /// The incoming hasher agrees with a plain hash however its chasing
    /// thread and the writes interleave: every write lands in the result.
    #[test]
    fn the_incoming_hash_catches_writes_while_it_chases() {
        let mem = create_guest_memory(64 << 20, Backing::Anon, 46).unwrap();
        for round in 0..20u64 {
            let hasher = IncomingHasher::start(&mem);
            for k in 0..400u64 {
                let gpa = ((k * 7919 + round * 131) % (16 << 8)) * 4096;
                assert!(write(&mem, gpa, &(k + round).to_le_bytes()));
                hasher.wrote(gpa, 8);
                if k % 97 == 0 {
                    std::thread::sleep(Duration::from_micros(300));
                }
            }
            assert_eq!(hasher.finish(&mem), hash(&mem), "round {round}");
        }
    }
}
