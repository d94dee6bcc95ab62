//! The source side of a live migration: pre-copy over the write-watch
//! layer, then stop-and-copy, then the hand-over.
//!
//! 1. A write-watch consumer opens with every page dirty (tracking starts
//!    if it was off). Round 0 takes everything and sends every page that
//!    is not all zero (the destination's RAM starts zeroed).
//! 2. Each later round takes what was written meanwhile and sends it. A
//!    page is taken (its dirty bit cleared) before it is read, so a write
//!    during the read marks it again for the next round: nothing written
//!    is ever left unsent.
//! 3. When the planner says so (`convergence`), the guest is paused, the
//!    final dirty set is taken and sent, then the machine state, then the
//!    end frame with the hash of all RAM.
//! 4. The destination checks and restores everything and acks; the source
//!    sends `go` and its run ends. Until `go` is written, any failure
//!    resumes the guest here, with nothing lost, and it can be migrated
//!    again. After it, the guest belongs to the destination.

use std::io::{self, BufWriter, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::convergence::{Decision, Planner, Policy, Round};
use super::hash::SourceHasher;
use super::ram;
use super::status::{Phase, RoundReport, Status, Tracker};
use super::stream::{
    Ack, End, Header, Kind, MAX_PAGES_PER_FRAME, PAGE, Reader, Resumed, RoundMark, StreamError,
    VERSION, Writer,
};
use super::transport::{self, Address, Connection};
use crate::dirty::bitmap::PageBitmap;
use crate::dirty::{ConsumerId, Initial, WatchError, WriteWatch};
use crate::memory::GuestMemoryMmap;
use crate::runner::{ControlError, StopReason, VmHandle};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the destination may take to check and restore the guest.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the destination may take to say it resumed.
const RESUMED_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Options {
    pub to: Address,
    pub policy: Policy,
    /// Bytes per second pre-copy may send; `None`: as fast as it can. The
    /// stop-and-copy phase is never limited (QEMU's neither).
    pub max_bandwidth: Option<u64>,
    /// Hash all RAM at the pause for the destination to compare.
    pub verify_ram: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect to {to}: {source}")]
    Connect {
        to: String,
        #[source]
        source: io::Error,
    },
    #[error("the destination went away: {0}")]
    Lost(#[source] io::Error),
    #[error("the destination refused the guest: {0}")]
    Refused(String),
    #[error("the destination's reply: {0}")]
    Reply(#[source] StreamError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("cancelled: {0}")]
    Cancelled(String),
    #[error("{0}")]
    Memory(String),
}

/// A writer that keeps to a bandwidth cap by sleeping.
struct Limited<W> {
    inner: W,
    cap: Option<u64>,
    began: Instant,
    written: u64,
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if let Some(cap) = self.cap {
            let due = Duration::from_secs_f64(self.written as f64 / cap as f64);
            if let Some(ahead) = due.checked_sub(self.began.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Out = Writer<Limited<BufWriter<Connection>>>;

/// What sending one dirty set did.
#[derive(Default)]
struct Sent {
    pages: u64,
    zero_pages: u64,
    /// Written again before their turn came: left to the next round.
    skipped_pages: u64,
}

/// How often a pre-copy round looks at what the guest wrote since the
/// round's dirty set was taken: at most this often, and only after this
/// many frames.
const PEEK_EVERY: Duration = Duration::from_millis(50);
const PEEK_FRAMES: u64 = 8;

/// Migrates the guest of `vm` as `options` say, reporting to `tracker`
/// (which must have been claimed with `Tracker::begin`). On success the
/// run of `vm` ends (`StopReason::Migrated`); on failure the guest runs on.
pub fn migrate(vm: &VmHandle, options: &Options, tracker: &Tracker) -> Result<(), MigrateError> {
    let ww = vm.write_watch();
    let started_tracking = ww.tracking_source().is_none();
    if started_tracking {
        ww.start(ww.available_source(), Initial::Dirty)?;
    }
    let consumer = match ww.open_consumer(true) {
        Ok(c) => c,
        Err(e) => {
            if started_tracking {
                let _ = ww.stop();
            }
            return Err(e.into());
        }
    };
    let mut run = Migration {
        vm,
        ww,
        mem: vm.memory(),
        consumer,
        tracker,
        options,
        began: Instant::now(),
        paused: false,
        committed: false,
    };
    let result = run.run();
    if !run.committed {
        let _ = vm.set_throttle(0);
        if run.paused {
            let _ = vm.resume();
        }
    }
    ww.close_consumer(consumer);
    if started_tracking && !run.committed {
        let _ = ww.stop();
    }
    let elapsed_ms = run.began.elapsed().as_secs_f64() * 1e3;
    match &result {
        Ok(()) => tracker.update(|s| {
            s.phase = Phase::Completed;
            s.elapsed_ms = elapsed_ms;
        }),
        Err(e) => {
            let phase = if matches!(e, MigrateError::Cancelled(_)) {
                Phase::Cancelled
            } else {
                Phase::Failed
            };
            tracker.update(|s| {
                s.phase = phase;
                s.error = Some(e.to_string());
                s.throttle_percent = 0;
                s.elapsed_ms = elapsed_ms;
            });
        }
    }
    if run.committed {
        vm.stop(StopReason::Migrated(options.to.to_string()));
    }
    result
}

struct Migration<'a> {
    vm: &'a VmHandle,
    ww: &'a WriteWatch,
    mem: &'a GuestMemoryMmap,
    consumer: ConsumerId,
    tracker: &'a Tracker,
    options: &'a Options,
    began: Instant,
    paused: bool,
    /// `go` was sent: the guest is the destination's now.
    committed: bool,
}

impl Migration<'_> {
    fn ms(&self) -> f64 {
        self.began.elapsed().as_secs_f64() * 1e3
    }

    fn take(&self) -> Result<Vec<PageBitmap>, MigrateError> {
        Ok(self.ww.take_consumer(self.consumer)?.0)
    }

    fn check_cancel(&self) -> Result<(), MigrateError> {
        if self.tracker.cancelled() {
            return Err(MigrateError::Cancelled("by request".into()));
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), MigrateError> {
        let to = self.options.to.to_string();
        let conn = transport::connect(&self.options.to, CONNECT_TIMEOUT)
            .map_err(|source| MigrateError::Connect { to, source })?;
        let replies = conn.try_clone().map_err(MigrateError::Lost)?;
        let ram_ranges = self.ww.ram_ranges();
        let header = Header {
            version: VERSION,
            purpose: "migration".into(),
            vcpus: self.vm.status()?.vcpus as u32,
            mem_bytes: self.ww.ram_bytes(),
            ram: ram_ranges.iter().map(|&(s, l)| [s, l]).collect(),
            writer: format!("writewatch {}", env!("CARGO_PKG_VERSION")),
            snapshot: None,
            ram_hash: self.options.verify_ram,
        };
        let limited = Limited {
            inner: BufWriter::with_capacity(1 << 20, conn),
            cap: self.options.max_bandwidth,
            began: Instant::now(),
            written: 0,
        };
        let mut out = Writer::start(limited, &header).map_err(MigrateError::Lost)?;
        // Hashed while pre-copy runs; the pause rehashes what was written.
        let hasher = if self.options.verify_ram {
            Some(SourceHasher::start(self.ww, self.mem)?)
        } else {
            None
        };
        let slots: Vec<u64> = ram_ranges.iter().map(|&(s, _)| s).collect();
        let mut planner = Planner::new(self.options.policy.clone());
        // Opened all dirty: the first take is every page.
        let mut dirty = self.take()?;
        let mut sent_before_pause: Vec<PageBitmap> =
            dirty.iter().map(|b| PageBitmap::new(b.pages())).collect();
        let mut round = 0u32;
        let converged = loop {
            self.tracker.update(|s| s.phase = Phase::PreCopy);
            let (start_ms, began, bytes0) = (self.ms(), Instant::now(), out.bytes);
            let sent = self.send(
                &mut out,
                &dirty,
                &slots,
                round == 0,
                Some(&mut sent_before_pause),
            )?;
            out.json(
                Kind::Round,
                &RoundMark {
                    round,
                    pages: sent.pages,
                },
            )
            .map_err(MigrateError::Lost)?;
            let duration = began.elapsed();
            let next = self.take()?;
            let dirtied: u64 = next.iter().map(PageBitmap::count).sum();
            let bytes = out.bytes - bytes0;
            let decision = planner.after_round(
                Round {
                    bytes,
                    duration,
                    dirtied_pages: dirtied,
                },
                self.began.elapsed(),
            );
            let report = round_report(
                round,
                start_ms,
                duration,
                &sent,
                bytes,
                dirtied,
                planner.throttle(),
                false,
            );
            let expected = planner.expected_downtime(dirtied);
            self.tracker.update(|s| {
                s.rounds.push(report);
                s.remaining_pages = dirtied;
                s.bandwidth_mib_s = planner.bandwidth().map(|b| b / MIB);
                s.expected_downtime_ms = expected.map(|d| d.as_secs_f64() * 1e3);
                s.throttle_percent = planner.throttle();
                s.elapsed_ms = self.ms();
            });
            dirty = next;
            match decision {
                Decision::Continue { throttle } => {
                    self.vm.set_throttle(throttle)?;
                    round += 1;
                }
                Decision::StopAndCopy { converged } => break converged,
                Decision::Cancel(why) => return Err(MigrateError::Cancelled(why.into())),
            }
            self.check_cancel()?;
        };

        // Stop and copy, at full speed.
        out.inner_mut().cap = None;
        self.vm.pause()?;
        self.paused = true;
        let paused_at = Instant::now();
        let paused_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let _ = self.vm.set_throttle(0);
        for (all, last) in dirty.iter_mut().zip(self.take()?) {
            all.union(&last);
        }
        self.tracker.update(|s| {
            s.phase = Phase::StopAndCopy;
            s.converged = Some(converged);
            s.throttle_percent = 0;
        });
        let (start_ms, began, bytes0) = (self.ms(), Instant::now(), out.bytes);
        let final_sent = self.send(&mut out, &dirty, &slots, false, None)?;
        let state = self.vm.save_state()?;
        let state_json =
            serde_json::to_vec(&state).map_err(|e| MigrateError::Memory(e.to_string()))?;
        out.frame(Kind::State, &[&state_json])
            .map_err(MigrateError::Lost)?;
        let hash_began = Instant::now();
        let ram_hash = hasher.map(|h| h.finish(self.mem)).transpose()?;
        let hash_ms = hash_began.elapsed().as_secs_f64() * 1e3;
        let pages_sent = self.tracker.get().map_or(0, |s| s.pages_sent);
        out.json(
            Kind::End,
            &End {
                ram_hash: ram_hash.clone(),
                pages_sent,
                rounds: round + 2,
                paused_unix_ns,
                hash_ms,
            },
        )
        .map_err(MigrateError::Lost)?;
        out.flush().map_err(MigrateError::Lost)?;
        let report = round_report(
            round + 1,
            start_ms,
            began.elapsed(),
            &final_sent,
            out.bytes - bytes0,
            0,
            0,
            true,
        );
        let distinct: u64 = sent_before_pause.iter().map(PageBitmap::count).sum();
        let lower_bound = (distinct + final_sent.pages) * PAGE as u64 + state_json.len() as u64;
        let total = out.bytes;
        self.tracker.update(|s| {
            s.rounds.push(report);
            s.remaining_pages = 0;
            s.bytes_sent = total;
            s.state_bytes = state_json.len() as u64;
            s.lower_bound_bytes = lower_bound;
            s.ram_hash = ram_hash;
        });

        let mut reader = Reader::raw(replies);
        let frame = read_reply(&mut reader, ACK_TIMEOUT, Kind::Ack)?;
        let ack: Ack = frame.json().map_err(MigrateError::Reply)?;
        if !ack.ok {
            return Err(MigrateError::Refused(
                ack.error.unwrap_or_else(|| "no reason given".into()),
            ));
        }
        out.frame(Kind::Go, &[]).map_err(MigrateError::Lost)?;
        out.flush().map_err(MigrateError::Lost)?;
        self.committed = true;
        // The guest is the destination's now; what follows is statistics.
        let resumed = read_reply(&mut reader, RESUMED_TIMEOUT, Kind::Resumed)
            .ok()
            .and_then(|f| f.json::<Resumed>().ok());
        let pause_ms = paused_at.elapsed().as_secs_f64() * 1e3;
        self.tracker.update(|s| match resumed {
            Some(r) => {
                s.downtime_ms = Some(r.downtime_ms);
                s.hash_ms = Some(r.hash_ms);
            }
            None => {
                s.downtime_ms = Some(pause_ms);
                s.error = Some(
                    "the destination did not report its resume; downtime is up to sending go"
                        .into(),
                );
            }
        });
        Ok(())
    }

    /// Sends the pages set in `dirty` (per slot, `slots` their starts).
    /// Round 0 skips pages that are all zero; later rounds send them as
    /// zero runs (they were written, so the destination may hold data).
    /// `sent_pages`, given only while the guest runs, collects the pages
    /// sent with contents; then pages the guest has written again since
    /// `dirty` was taken are not sent now: the next take holds them, so
    /// sending them now would only be resending them later.
    fn send(
        &self,
        out: &mut Out,
        dirty: &[PageBitmap],
        slots: &[u64],
        skip_zero: bool,
        mut sent_pages: Option<&mut Vec<PageBitmap>>,
    ) -> Result<Sent, MigrateError> {
        let mut sent = Sent::default();
        let running = sent_pages.is_some();
        let mut redirtied: Option<Vec<PageBitmap>> = None;
        let mut peeked = (Instant::now(), 0u64);
        let mut buf = vec![0u8; MAX_PAGES_PER_FRAME as usize * PAGE];
        let (mut pagemap, mut populated) = (ram::Populated::new(), Vec::new());
        let mut zeros: Vec<(u64, u32)> = Vec::new();
        let mut frames = 0u64;
        for (slot, (bitmap, &start)) in dirty.iter().zip(slots).enumerate() {
            for (first, count) in bitmap.runs() {
                let mut page = first;
                while page < first + count {
                    let n = (first + count - page).min(u64::from(MAX_PAGES_PER_FRAME)) as usize;
                    let gpa = start + page * PAGE as u64;
                    if running
                        && frames >= peeked.1 + PEEK_FRAMES
                        && peeked.0.elapsed() >= PEEK_EVERY
                    {
                        redirtied = Some(self.ww.peek_consumer(self.consumer)?);
                        peeked = (Instant::now(), frames);
                    }
                    let data = &mut buf[..n * PAGE];
                    ram::read_populated(self.mem, gpa, data, &mut pagemap, &mut populated)
                        .map_err(MigrateError::Memory)?;
                    // 0: send, 1: zero (never written, or all zero), 2: written
                    // again since the take, so the next round sends it.
                    let mut class = [0u8; MAX_PAGES_PER_FRAME as usize];
                    for (k, c) in class[..n].iter_mut().enumerate() {
                        *c = if redirtied
                            .as_ref()
                            .is_some_and(|r| r[slot].get(page + k as u64))
                        {
                            2
                        } else if !populated[k] || ram::is_zero(&data[k * PAGE..(k + 1) * PAGE]) {
                            1
                        } else {
                            0
                        };
                    }
                    let mut i = 0;
                    while i < n {
                        let kind = class[i];
                        let mut j = i + 1;
                        while j < n && class[j] == kind {
                            j += 1;
                        }
                        let at = gpa + (i * PAGE) as u64;
                        let pages = (j - i) as u64;
                        if kind == 2 {
                            sent.skipped_pages += pages;
                        } else if kind == 1 {
                            sent.zero_pages += pages;
                            if !skip_zero {
                                zeros.push((at, pages as u32));
                                if zeros.len() == MAX_PAGES_PER_FRAME as usize {
                                    out.zeros(&zeros).map_err(MigrateError::Lost)?;
                                    zeros.clear();
                                }
                            }
                        } else {
                            out.pages(at, &data[i * PAGE..j * PAGE])
                                .map_err(MigrateError::Lost)?;
                            sent.pages += pages;
                            if let Some(bitmaps) = sent_pages.as_deref_mut() {
                                let first = page + i as u64;
                                for p in first..first + pages {
                                    bitmaps[slot].set(p);
                                }
                            }
                        }
                        i = j;
                    }
                    page += n as u64;
                    frames += 1;
                    self.check_cancel()?;
                    if frames % 16 == 0 {
                        let (bytes, elapsed_ms) = (out.bytes, self.ms());
                        self.tracker.update(|s| {
                            s.bytes_sent = bytes;
                            s.elapsed_ms = elapsed_ms;
                        });
                    }
                }
            }
        }
        if !zeros.is_empty() {
            out.zeros(&zeros).map_err(MigrateError::Lost)?;
        }
        let bytes = out.bytes;
        self.tracker.update(|s| {
            s.pages_sent += sent.pages;
            s.bytes_sent = bytes;
        });
        Ok(sent)
    }
}

const MIB: f64 = (1u64 << 20) as f64;

#[allow(clippy::too_many_arguments)]
fn round_report(
    round: u32,
    start_ms: f64,
    duration: Duration,
    sent: &Sent,
    bytes: u64,
    dirtied: u64,
    throttle: u8,
    paused: bool,
) -> RoundReport {
    let secs = duration.as_secs_f64().max(1e-9);
    RoundReport {
        round,
        start_ms,
        ms: duration.as_secs_f64() * 1e3,
        pages: sent.pages,
        zero_pages: sent.zero_pages,
        skipped_pages: sent.skipped_pages,
        bytes,
        dirtied_pages: dirtied,
        dirty_rate_mib_s: (dirtied * PAGE as u64) as f64 / MIB / secs,
        bandwidth_mib_s: bytes as f64 / MIB / secs,
        throttle_percent: throttle,
        paused,
    }
}

/// The destination's next frame, which must be `kind`, within `timeout`.
fn read_reply(
    reader: &mut Reader<Connection>,
    timeout: Duration,
    kind: Kind,
) -> Result<super::stream::Frame, MigrateError> {
    reader
        .input()
        .set_read_timeout(Some(timeout))
        .map_err(MigrateError::Lost)?;
    let frame = reader.frame().map_err(MigrateError::Reply)?;
    if frame.kind != kind {
        return Err(MigrateError::Reply(StreamError::Unexpected {
            expected: kind.name(),
            got: frame.kind.name(),
        }));
    }
    Ok(frame)
}

/// A new migration's status for `vm`.
pub fn initial_status(vm: &VmHandle, to: &Address) -> Status {
    let ww = vm.write_watch();
    let source = ww
        .tracking_source()
        .unwrap_or(ww.available_source())
        .name()
        .to_string();
    Status::new(to.to_string(), source, ww.ram_bytes() / PAGE as u64)
}
