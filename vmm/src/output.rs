//! Host outputs (stdout, the `--records` and `--report` files) that a guest
//! can never use to stall the VMM.
//!
//! A reader that stops reading must not hang a vCPU, the main loop or the
//! exit: Firecracker learned this and made its stdout non-blocking. Here no
//! VMM thread but one writer thread per output ever calls `write()` on it;
//! everything else hands bytes over through a bounded queue and chooses what
//! happens when the queue is full:
//! - [`Sink::offer`] drops the bytes and counts them (the console: a serial
//!   line nobody listens to loses characters);
//! - [`Sink::push`] waits for room until the caller says stop (records:
//!   back-pressure on the guest, nothing dropped while the run lasts).
//!
//! [`Sink::finish`] waits for the queue to drain but gives up on a reader that
//! makes no progress for [`STALL_LIMIT`], and says how many bytes it left
//! behind, so the VMM's exit never waits on a stalled reader.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Bytes an output may hold queued for its writer (at most one item more).
pub const SINK_CAPACITY: usize = 2 << 20;
/// How long `finish` waits for a reader that makes no progress.
pub const STALL_LIMIT: Duration = Duration::from_millis(500);
/// How often a waiting producer re-checks whether it should stop.
const WAIT_SLICE: Duration = Duration::from_millis(20);
/// The largest single `write()` the writer issues, so progress is seen
/// (and a slow but live reader is told apart from a stalled one).
const WRITE_PIECE: usize = 64 << 10;

/// Where an output goes, as named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    File(PathBuf),
}

impl Destination {
    /// `-` is stdout; anything else is a path.
    pub fn from_arg(path: &Path) -> Self {
        if path == Path::new("-") {
            Destination::Stdout
        } else {
            Destination::File(path.to_path_buf())
        }
    }

    /// How the destination is named in messages.
    pub fn describe(&self) -> String {
        match self {
            Destination::Stdout => "stdout".into(),
            Destination::File(path) => path.display().to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot create {path}: {source}")]
pub struct OpenError {
    pub path: String,
    #[source]
    pub source: io::Error,
}

/// What became of everything handed to a sink.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkOutcome {
    /// Bytes the destination accepted.
    pub written: u64,
    /// Bytes `offer` dropped because the queue was full.
    pub dropped: u64,
    /// Bytes still queued when `finish` gave up on a stalled reader, plus
    /// bytes discarded after a write error.
    pub unwritten: u64,
    /// The first write error, if any (e.g. EPIPE, ENOSPC, EBADF).
    pub error: Option<String>,
}

impl SinkOutcome {
    /// True when every byte handed over with `push` reached the destination.
    pub fn complete(&self) -> bool {
        self.unwritten == 0 && self.error.is_none()
    }
}

/// Returned by `push` when its caller asked it to stop waiting.
#[derive(Debug, PartialEq, Eq)]
pub struct Interrupted;

/// One output and its writer thread.
pub struct Sink {
    shared: Arc<Shared>,
    name: String,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when the writer took bytes away or finished a write.
    room: Condvar,
    /// Signalled when bytes were queued or the sink is closing.
    work: Condvar,
    written: AtomicU64,
    /// Nanoseconds since `epoch` of the writer's last progress.
    progress_ns: AtomicU64,
    epoch: Instant,
}

#[derive(Default)]
struct State {
    queue: Vec<u8>,
    /// Bytes the writer took and has not finished writing.
    in_flight: usize,
    dropped: u64,
    discarded: u64,
    error: Option<String>,
    closing: bool,
    done: bool,
}

impl State {
    fn queued(&self) -> usize {
        self.queue.len() + self.in_flight
    }
}

impl Sink {
    /// A sink writing to `out` on a thread of its own named after `name`.
    pub fn spawn(
        name: &str,
        out: impl FnOnce() -> io::Result<Box<dyn Write + Send>> + Send + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            room: Condvar::new(),
            work: Condvar::new(),
            written: AtomicU64::new(0),
            progress_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let worker = shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("out-{name}"))
            .spawn(move || worker.write_loop(out));
        if let Err(e) = spawned {
            let mut state = shared.lock();
            state.error = Some(format!("cannot start its writer thread: {e}"));
            state.done = true;
        }
        Sink {
            shared,
            name: name.to_string(),
        }
    }

    /// A sink for the process's stdout (a duplicate of fd 1, so nothing here
    /// contends with Rust's own `io::stdout` lock).
    pub fn stdout() -> Self {
        use std::os::fd::AsFd;
        let fd = io::stdout().as_fd().try_clone_to_owned();
        Sink::spawn("stdout", move || {
            let file = File::from(fd?);
            Ok(Box::new(file) as Box<dyn Write + Send>)
        })
    }

    /// A sink for the process's stderr (a duplicate of fd 2).
    pub fn stderr() -> Self {
        use std::os::fd::AsFd;
        let fd = io::stderr().as_fd().try_clone_to_owned();
        Sink::spawn("stderr", move || {
            let file = File::from(fd?);
            Ok(Box::new(file) as Box<dyn Write + Send>)
        })
    }

    /// A sink for the file at `path`, created (and truncated) now so a bad
    /// path fails before the guest boots. A FIFO is opened by the writer
    /// thread instead, since opening one blocks until a reader appears.
    pub fn create(path: &Path) -> Result<Self, OpenError> {
        let shown = path.display().to_string();
        let open_error = |source| OpenError {
            path: shown.clone(),
            source,
        };
        let is_fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
        if is_fifo {
            let path = path.to_path_buf();
            return Ok(Sink::spawn(&shown, move || {
                let file = OpenOptions::new().write(true).open(&path)?;
                Ok(Box::new(file) as Box<dyn Write + Send>)
            }));
        }
        let file = File::create(path).map_err(open_error)?;
        Ok(Sink::spawn(&shown, move || {
            Ok(Box::new(file) as Box<dyn Write + Send>)
        }))
    }

    /// The name messages use for this output.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues `bytes` if there is room; otherwise drops and counts them.
    pub fn offer(&self, bytes: &[u8]) {
        let mut state = self.shared.lock();
        if state.error.is_some() || state.done {
            state.discarded += bytes.len() as u64;
        } else if state.queued() + bytes.len() > SINK_CAPACITY {
            state.dropped += bytes.len() as u64;
        } else {
            self.shared.enqueue(&mut state, bytes);
        }
    }

    /// Queues `bytes`, waiting for room while `stop()` is false. An empty
    /// queue takes any item, so one larger than the capacity still passes.
    pub fn push(&self, bytes: &[u8], stop: impl Fn() -> bool) -> Result<(), Interrupted> {
        let mut state = self.shared.lock();
        loop {
            if state.error.is_some() || state.done {
                // Counted as unwritten; `finish` reports the error.
                state.discarded += bytes.len() as u64;
                return Ok(());
            }
            if state.queued() == 0 || state.queued() + bytes.len() <= SINK_CAPACITY {
                self.shared.enqueue(&mut state, bytes);
                return Ok(());
            }
            if stop() {
                return Err(Interrupted);
            }
            state = self.shared.wait_for_room(state);
        }
    }

    /// Bytes `offer` has dropped so far.
    pub fn dropped(&self) -> u64 {
        self.shared.lock().dropped
    }

    /// Closes the sink and waits until everything queued is written, the
    /// writer fails, `hard_deadline` passes, or the reader makes no progress
    /// for `STALL_LIMIT`. A writer still blocked then is left behind; it
    /// ends with the process.
    pub fn finish(&self, hard_deadline: Option<Instant>) -> SinkOutcome {
        let closed_at = Instant::now();
        let mut state = self.shared.lock();
        state.closing = true;
        self.shared.work.notify_all();
        loop {
            if state.done {
                break;
            }
            let now = Instant::now();
            let last_progress = self.shared.last_progress().max(closed_at);
            let stalled = now.duration_since(last_progress) >= STALL_LIMIT;
            if stalled || hard_deadline.is_some_and(|d| now >= d) {
                break;
            }
            state = self.shared.wait_for_room(state);
        }
        SinkOutcome {
            written: self.shared.written.load(Ordering::SeqCst),
            dropped: state.dropped,
            unwritten: state.queued() as u64 + state.discarded,
            error: state.error.clone(),
        }
    }
}

impl Drop for Sink {
    /// A sink dropped without `finish` still lets its writer drain and end.
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closing = true;
        self.shared.work.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain counters and a buffer; a panic elsewhere while
        // holding the lock leaves them usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `WAIT_SLICE` for the writer to make room or finish.
    fn wait_for_room<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.room
            .wait_timeout(state, WAIT_SLICE)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    fn enqueue(&self, state: &mut State, bytes: &[u8]) {
        let was_empty = state.queue.is_empty();
        state.queue.extend_from_slice(bytes);
        if was_empty {
            self.work.notify_one();
        }
    }

    fn note_progress(&self) {
        let ns = self.epoch.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        self.progress_ns.store(ns, Ordering::SeqCst);
    }

    fn last_progress(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.progress_ns.load(Ordering::SeqCst))
    }

    fn write_loop(&self, open: impl FnOnce() -> io::Result<Box<dyn Write + Send>>) {
        let mut out = match open() {
            Ok(out) => out,
            Err(e) => {
                let mut state = self.lock();
                state.error = Some(e.to_string());
                state.done = true;
                self.room.notify_all();
                return;
            }
        };
        let mut chunk = Vec::new();
        loop {
            {
                let mut state = self.lock();
                while state.queue.is_empty() && !state.closing {
                    state = self.work.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                if state.queue.is_empty() {
                    state.done = true;
                    self.room.notify_all();
                    break;
                }
                std::mem::swap(&mut chunk, &mut state.queue);
                state.in_flight = chunk.len();
                self.room.notify_all();
            }
            let result = self.write_out(&mut *out, &chunk);
            let mut state = self.lock();
            state.in_flight = 0;
            if let Err((e, left)) = result {
                state.error = Some(e.to_string());
                state.discarded += left as u64 + state.queue.len() as u64;
                state.queue.clear();
                state.done = true;
                self.room.notify_all();
                break;
            }
            self.room.notify_all();
            drop(state);
            chunk.clear();
        }
        let _ = out.flush();
    }

    /// Writes `chunk` in pieces, noting progress after each; on failure,
    /// returns the error and how many bytes were not written.
    fn write_out(&self, out: &mut dyn Write, chunk: &[u8]) -> Result<(), (io::Error, usize)> {
        let mut done = 0;
        while done < chunk.len() {
            let end = chunk.len().min(done + WRITE_PIECE);
            match out.write(&chunk[done..end]) {
                Ok(0) => return Err((io::ErrorKind::WriteZero.into(), chunk.len() - done)),
                Ok(n) => {
                    done += n;
                    self.written.fetch_add(n as u64, Ordering::SeqCst);
                    self.note_progress();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((e, chunk.len() - done)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A writer that accepts nothing until released, like a pipe nobody reads.
    struct Gate {
        open: Arc<AtomicBool>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            while !self.open.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(1));
            }
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn gated() -> (Sink, Arc<AtomicBool>, Arc<Mutex<Vec<u8>>>) {
        let open = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let gate = Gate {
            open: open.clone(),
            got: got.clone(),
        };
        let sink = Sink::spawn("test", move || Ok(Box::new(gate) as Box<dyn Write + Send>));
        (sink, open, got)
    }

    #[test]
    fn everything_pushed_arrives_in_order() {
        let (sink, open, got) = gated();
        open.store(true, Ordering::SeqCst);
        for i in 0..1000u32 {
            sink.push(&i.to_le_bytes(), || false).unwrap();
        }
        let outcome = sink.finish(None);
        assert!(outcome.complete(), "{outcome:?}");
        assert_eq!(outcome.written, 4000);
        let expected: Vec<u8> = (0..1000u32).flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(*got.lock().unwrap(), expected);
    }

    #[test]
    fn offer_drops_and_counts_when_the_reader_stalls() {
        let (sink, _open, _got) = gated();
        let piece = vec![b'x'; 1 << 20];
        for _ in 0..10 {
            sink.offer(&piece);
        }
        // The writer holds at most one capacity's worth in flight and the
        // queue another; everything beyond was dropped, never buffered.
        let outcome = sink.finish(None);
        assert!(
            outcome.dropped >= (10 << 20) - 2 * SINK_CAPACITY as u64,
            "{outcome:?}"
        );
        assert_eq!(outcome.written, 0);
        assert_eq!(outcome.dropped + outcome.unwritten, 10 << 20);
    }

    #[test]
    fn push_waits_for_room_and_stops_when_asked() {
        let (sink, open, _got) = gated();
        // A full queue's worth, taken by the writer (which blocks) or still
        // queued: either way nothing more fits.
        sink.push(&vec![0u8; SINK_CAPACITY], || false).unwrap();
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        thread::scope(|s| {
            s.spawn(|| {
                thread::sleep(Duration::from_millis(100));
                stop.store(true, Ordering::SeqCst);
            });
            assert_eq!(
                sink.push(b"more", || stop.load(Ordering::SeqCst)),
                Err(Interrupted)
            );
        });
        assert!(started.elapsed() >= Duration::from_millis(100));
        // Once the reader reads, the same push goes through.
        open.store(true, Ordering::SeqCst);
        sink.push(b"more", || false).unwrap();
        let outcome = sink.finish(None);
        assert!(outcome.complete(), "{outcome:?}");
        assert_eq!(outcome.written, SINK_CAPACITY as u64 + 4);
    }

    #[test]
    fn finish_gives_up_on_a_stalled_reader_and_says_what_it_left() {
        let (sink, _open, _got) = gated();
        sink.push(b"never read", || false).unwrap();
        let outcome = sink.finish(None);
        assert_eq!(outcome.unwritten, 10);
        assert!(!outcome.complete());
    }

    #[test]
    fn a_write_error_is_kept_and_later_bytes_are_counted_unwritten() {
        let sink = Sink::create(Path::new("/dev/full")).unwrap();
        sink.push(b"a record\n", || false).unwrap();
        let outcome = sink.finish(None);
        assert!(outcome.error.is_some(), "{outcome:?}");
        assert_eq!(outcome.unwritten, 9);
    }

    #[test]
    fn a_path_that_cannot_be_created_fails_at_once() {
        let err = Sink::create(Path::new("/nonexistent-dir/out.jsonl"))
            .err()
            .expect("no error");
        assert!(err.to_string().contains("/nonexistent-dir/out.jsonl"));
    }
}
