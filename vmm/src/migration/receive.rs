//! The destination side: a machine built empty, filled from a stream
//! (migration or snapshot), checked, and given its state, ready to run.
//!
//! Everything in the stream is untrusted. The header's shape must be one
//! this VMM builds and this host can hold; every page must land in guest
//! RAM; the state must describe this machine; the RAM hash must match.
//! Any fault is a one-line error, and the guest is not resumed.

use std::io::{BufReader, BufWriter, Read};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::hash::{self, IncomingHasher};
use super::ram;
use super::state::MachineState;
use super::stream::{Ack, End, Header, Kind, Reader, Resumed, StreamError, Writer};
use super::transport::{Connection, Listener};
use crate::builder::{self, BuildError, Machine};
use crate::config::{VmConfig, format_size};
use crate::memory::GuestMemoryMmap;
use crate::output::Sink;

/// A source that sends nothing for this long is taken for dead (it may
/// be hashing a large guest's RAM before its end frame).
const QUIET_LIMIT: Duration = Duration::from_secs(60);
/// How often a wait for the source looks for a signal or the deadline.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("{0}")]
    Bad(String),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("restoring the machine state: {0}")]
    Restore(String),
    #[error("the guest's RAM differs from the source's (hash {got}, the source's {want})")]
    HashMismatch { got: String, want: String },
    #[error("the migration connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("interrupted by {0}")]
    Interrupted(String),
}

/// What a stream brought besides RAM.
pub struct Applied {
    pub state: Option<MachineState>,
    pub end: End,
    pub pages: u64,
    pub rounds: u32,
    pub bytes: u64,
}

/// Checks a header before anything is built from it.
pub fn check_header(header: &Header) -> Result<(), ReceiveError> {
    let expected: Vec<[u64; 2]> = crate::memory::ram_ranges(header.mem_bytes)
        .into_iter()
        .map(|(s, l)| [s, l])
        .collect();
    if header.ram != expected {
        return Err(ReceiveError::Bad(format!(
            "the stream's RAM layout {:?} is not what {} of RAM has here ({expected:?})",
            header.ram,
            format_size(header.mem_bytes)
        )));
    }
    if let Some(host) = host_ram_bytes().filter(|&host| header.mem_bytes > host) {
        return Err(ReceiveError::Bad(format!(
            "the stream's guest has {} of RAM, more than this host's {}",
            format_size(header.mem_bytes),
            format_size(host)
        )));
    }
    Ok(())
}

/// The host's RAM (`MemTotal`), if /proc says.
pub fn host_ram_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The configuration of the machine a header describes: its shape from
/// the stream, how to back and track it from `local`.
pub fn config_for(header: &Header, local: &VmConfig) -> VmConfig {
    VmConfig {
        vcpus: header.vcpus,
        mem_bytes: header.mem_bytes,
        ..local.clone()
    }
}

/// Applies frames from `reader` to guest RAM `mem` until the end frame.
/// `need_state`: the stream must carry the machine state. `wrote(gpa,
/// len)` is told of each write into RAM, after it.
pub fn apply<R: Read>(
    reader: &mut Reader<R>,
    mem: &GuestMemoryMmap,
    header: &Header,
    need_state: bool,
    wrote: &dyn Fn(u64, u64),
) -> Result<Applied, ReceiveError> {
    let mut state = None;
    let mut pages = 0u64;
    let mut rounds = 0u32;
    loop {
        let frame = reader.frame()?;
        let bad = |why: String| {
            ReceiveError::Bad(format!(
                "frame {} ({}): {why}",
                frame.index,
                frame.kind.name()
            ))
        };
        match frame.kind {
            Kind::Pages => {
                let (gpa, data) = frame.pages()?;
                if !ram::write(mem, gpa, data) {
                    return Err(bad(format!(
                        "{} pages at {gpa:#x} lie outside guest RAM",
                        data.len() / super::stream::PAGE
                    )));
                }
                wrote(gpa, data.len() as u64);
                pages += (data.len() / super::stream::PAGE) as u64;
            }
            Kind::Zeros => {
                for (gpa, count) in frame.zeros()? {
                    if !ram::zero(mem, gpa, u64::from(count)) {
                        return Err(bad(format!(
                            "{count} zero pages at {gpa:#x} lie outside guest RAM"
                        )));
                    }
                    wrote(gpa, u64::from(count) * super::stream::PAGE as u64);
                }
            }
            Kind::Round => {
                let mark: super::stream::RoundMark = frame.json()?;
                rounds = rounds.max(mark.round + 1);
            }
            Kind::State => {
                if state.is_some() {
                    return Err(bad("a second machine state".into()));
                }
                let s: MachineState = frame.json()?;
                s.check(header.vcpus).map_err(bad)?;
                state = Some(s);
            }
            Kind::End => {
                let end: End = frame.json()?;
                if need_state && state.is_none() {
                    return Err(bad("the stream ended without the machine state".into()));
                }
                return Ok(Applied {
                    state,
                    end,
                    pages,
                    rounds,
                    bytes: reader.bytes,
                });
            }
            other => {
                return Err(StreamError::Unexpected {
                    expected: "pages, zeros, round, state or end",
                    got: other.name(),
                }
                .into());
            }
        }
    }
}

/// A file holds nothing after its end frame.
pub fn expect_eof<R: Read>(reader: &mut Reader<R>) -> Result<(), ReceiveError> {
    if reader.at_eof()? {
        Ok(())
    } else {
        Err(ReceiveError::Bad("data after the end frame".into()))
    }
}

/// Compares guest RAM with the hash the stream ended with (if it has one),
/// finishing `hasher`'s work if one ran while the stream arrived; returns
/// how long hashing took after the end.
pub fn verify_hash(
    machine: &Machine,
    end: &End,
    hasher: Option<IncomingHasher>,
) -> Result<f64, ReceiveError> {
    let Some(want) = &end.ram_hash else {
        return Ok(0.0);
    };
    let began = Instant::now();
    let got = match hasher {
        Some(h) => h.finish(&machine.memory),
        None => hash::hash(&machine.memory),
    };
    if &got != want {
        return Err(ReceiveError::HashMismatch {
            got,
            want: want.clone(),
        });
    }
    Ok(began.elapsed().as_secs_f64() * 1e3)
}

/// Gives `machine` the saved state: VM-wide first (interrupt controllers,
/// PIT), then each vCPU, then the devices, and what the VMM knew.
pub fn restore(machine: &mut Machine, state: &MachineState) -> Result<(), ReceiveError> {
    let fail = |e: String| ReceiveError::Restore(e);
    state.check(machine.vcpus.len() as u32).map_err(fail)?;
    state
        .vm
        .restore(&machine.watch.vm().fd)
        .map_err(|e| fail(e.to_string()))?;
    for (vcpu, saved) in machine.vcpus.iter().zip(&state.vcpus) {
        saved
            .restore(&vcpu.fd, machine.xsave_size)
            .map_err(|e| fail(e.to_string()))?;
    }
    machine
        .devices
        .restore(&state.console)
        .map_err(|e| fail(e.to_string()))?;
    machine.facts = state.facts();
    Ok(())
}

/// A guest that arrived: its machine, and the hand-over to finish once
/// it runs.
pub struct Arrived {
    machine: Machine,
    handover: Handover,
}

impl Arrived {
    pub fn split(self) -> (Machine, Handover) {
        (self.machine, self.handover)
    }
}

/// The source waits to hear that the guest runs here.
pub struct Handover {
    report: ArrivalReport,
    paused_unix_ns: u64,
    replies: Writer<BufWriter<Connection>>,
}

/// What the destination reports about the arrival.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ArrivalReport {
    /// The address the guest arrived at.
    pub at: String,
    pub pages: u64,
    pub rounds: u32,
    pub bytes: u64,
    /// Source pause to resume here.
    pub downtime_ms: f64,
    /// Of that, hashing RAM at both ends.
    pub hash_ms: f64,
}

impl Handover {
    /// Call once the guest runs here: tells the source, returns the report.
    pub fn resumed(mut self) -> ArrivalReport {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.report.downtime_ms = now.saturating_sub(self.paused_unix_ns) as f64 / 1e6;
        let _ = self.replies.json(
            Kind::Resumed,
            &Resumed {
                downtime_ms: self.report.downtime_ms,
                hash_ms: self.report.hash_ms,
            },
        );
        let _ = self.replies.flush();
        self.report
    }
}

/// Reads a connection in short waits, so a signal or the deadline is
/// noticed while the source is quiet, and a source quiet for longer than
/// `QUIET_LIMIT` counts as gone.
struct Patient<'a> {
    conn: Connection,
    interrupted: &'a dyn Fn() -> Option<String>,
}

impl Read for Patient<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let began = Instant::now();
        loop {
            match self.conn.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if let Some(why) = (self.interrupted)() {
                        return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, why));
                    }
                    if began.elapsed() >= QUIET_LIMIT {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("nothing came for {} s", QUIET_LIMIT.as_secs()),
                        ));
                    }
                }
                other => return other,
            }
        }
    }
}

/// An I/O error that carries an interruption becomes `Interrupted`.
fn interrupted_or(e: ReceiveError) -> ReceiveError {
    let io = match &e {
        ReceiveError::Stream(StreamError::Io(io)) | ReceiveError::Io(io) => io,
        _ => return e,
    };
    if io.kind() == std::io::ErrorKind::Interrupted {
        return ReceiveError::Interrupted(io.to_string());
    }
    e
}

/// Takes one migration from `listener`: builds the machine the stream
/// describes, fills it, checks it, restores it, acks, and waits for `go`.
/// `interrupted` says when to give up waiting (a signal, the deadline).
pub fn incoming(
    listener: &Listener,
    local: &VmConfig,
    stdout: Arc<Sink>,
    interrupted: &dyn Fn() -> Option<String>,
) -> Result<Arrived, ReceiveError> {
    let conn = accept(listener, interrupted)?;
    conn.set_read_timeout(Some(POLL))?;
    let at = listener.local();
    let mut replies = Writer::raw(BufWriter::new(conn.try_clone()?));
    let input = Patient { conn, interrupted };
    match receive(input, local, stdout) {
        Ok((machine, applied, hash_ms, mut reader)) => {
            replies.json(
                Kind::Ack,
                &Ack {
                    ok: true,
                    error: None,
                },
            )?;
            replies.flush()?;
            let go = reader.frame().map_err(|e| {
                interrupted_or(ReceiveError::Bad(format!(
                    "the source did not hand the guest over ({e}); not resuming it here"
                )))
            })?;
            if go.kind != Kind::Go {
                return Err(StreamError::Unexpected {
                    expected: "go",
                    got: go.kind.name(),
                }
                .into());
            }
            Ok(Arrived {
                machine,
                handover: Handover {
                    report: ArrivalReport {
                        at,
                        pages: applied.pages,
                        rounds: applied.end.rounds,
                        bytes: applied.bytes,
                        downtime_ms: 0.0,
                        hash_ms: applied.end.hash_ms + hash_ms,
                    },
                    paused_unix_ns: applied.end.paused_unix_ns,
                    replies,
                },
            })
        }
        Err(e) => {
            let e = interrupted_or(e);
            // Tell the source why, if it still listens.
            let _ = replies.json(
                Kind::Ack,
                &Ack {
                    ok: false,
                    error: Some(e.to_string()),
                },
            );
            let _ = replies.flush();
            Err(e)
        }
    }
}

type Received<'a> = (Machine, Applied, f64, Reader<BufReader<Patient<'a>>>);

fn receive<'a>(
    input: Patient<'a>,
    local: &VmConfig,
    stdout: Arc<Sink>,
) -> Result<Received<'a>, ReceiveError> {
    let (mut reader, header) = Reader::start(BufReader::with_capacity(1 << 20, input))?;
    if header.purpose != "migration" {
        return Err(ReceiveError::Bad(format!(
            "the stream is a {}, not a migration",
            header.purpose
        )));
    }
    check_header(&header)?;
    let mut machine = builder::build_for_restore(&config_for(&header, local), stdout)?;
    let hasher = header
        .ram_hash
        .then(|| IncomingHasher::start(&machine.memory));
    let wrote = |gpa, len| {
        if let Some(h) = &hasher {
            h.wrote(gpa, len);
        }
    };
    let applied = apply(&mut reader, &machine.memory, &header, true, &wrote)?;
    let hash_ms = verify_hash(&machine, &applied.end, hasher)?;
    let state = applied
        .state
        .as_ref()
        .expect("apply checked the state came");
    restore(&mut machine, state)?;
    Ok((machine, applied, hash_ms, reader))
}

fn accept(
    listener: &Listener,
    interrupted: &dyn Fn() -> Option<String>,
) -> Result<Connection, ReceiveError> {
    listener.set_nonblocking(true)?;
    loop {
        match listener.accept() {
            Ok(conn) => {
                conn.set_nonblocking(false)?;
                return Ok(conn);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(why) = interrupted() {
                    return Err(ReceiveError::Interrupted(why));
                }
                std::thread::sleep(POLL.min(Duration::from_millis(20)));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
