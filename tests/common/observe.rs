//! Running `writewatch` the way a hostile-guest test needs to see it: how
//! long it took, its peak memory, and its output, with the option of never
//! reading its stdout (a stalled reader).

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::writewatch;

/// What a test reader does with the VMM's stdout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reader {
    /// Reads everything, as a terminal or a log collector would.
    Reads,
    /// Holds the pipe open and never reads: writes block once it is full.
    Stalled,
}

/// How one run went.
pub struct Observed {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    /// From spawning the process to reaping it.
    pub elapsed: Duration,
    /// The process's peak resident set in KiB: the last `VmHWM` read from
    /// /proc/<pid>/status while it ran, every few milliseconds. (`wait4`'s
    /// `ru_maxrss` would not do: it keeps the high-water mark of the test
    /// process the child was forked from, from before its `exec`.)
    pub peak_rss_kib: u64,
}

impl Observed {
    /// The exit code; panics (failing the test) if a signal ended it.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| {
            panic!(
                "writewatch ended by signal {:?}; stderr: {}",
                self.status.signal(),
                self.stderr
            )
        })
    }
}

/// A VMM still running after this long is hung: it is killed, and the test
/// fails on its signal instead of hanging the suite.
const HUNG_AFTER: Duration = Duration::from_secs(150);

/// Runs `writewatch args`, watching its memory and time.
pub fn observe(args: &[&str], reader: Reader) -> Observed {
    observe_signalled(args, reader, None)
}

/// `observe`, sending `signal` to the VMM after `after` when given.
pub fn observe_signalled(
    args: &[&str],
    reader: Reader,
    signal: Option<(Duration, i32)>,
) -> Observed {
    let started = Instant::now();
    let mut child = writewatch()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting writewatch");
    let pid = child.id();
    let mut err_pipe = child.stderr.take().unwrap();
    let stderr = thread::spawn(move || {
        let mut text = Vec::new();
        let _ = err_pipe.read_to_end(&mut text);
        text
    });
    let out_pipe = child.stdout.take().unwrap();
    // A stalled reader keeps the pipe open, unread, until the VMM is gone.
    let (stdout, _held) = match reader {
        Reader::Reads => {
            let mut pipe = out_pipe;
            let thread = thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            });
            (Some(thread), None)
        }
        Reader::Stalled => (None, Some(out_pipe)),
    };
    let exited = Arc::new(AtomicBool::new(false));
    let hwm = Arc::new(AtomicU64::new(0));
    let poller = {
        let (exited, hwm) = (exited.clone(), hwm.clone());
        thread::spawn(move || {
            let mut signalled = false;
            while !exited.load(Ordering::SeqCst) {
                if let Some(kib) = vm_hwm_kib(pid) {
                    hwm.fetch_max(kib, Ordering::SeqCst);
                }
                if let Some((after, sig)) = signal {
                    if started.elapsed() >= after && !signalled {
                        signalled = true;
                        // SAFETY: kill(2) takes plain integers; the child is
                        // not reaped until `wait` below returns.
                        unsafe { libc::kill(pid as libc::pid_t, sig) };
                    }
                }
                if started.elapsed() > HUNG_AFTER {
                    // SAFETY: kill(2) takes plain integers; the child is not
                    // reaped until `wait` below returns, so `pid` is still ours.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let status = child.wait().expect("waiting for writewatch");
    let elapsed = started.elapsed();
    exited.store(true, Ordering::SeqCst);
    poller.join().unwrap();
    let stdout = match stdout {
        Some(reader) => reader.join().unwrap(),
        None => Vec::new(),
    };
    let stderr = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
    Observed {
        status,
        stdout,
        stderr,
        elapsed,
        peak_rss_kib: hwm.load(Ordering::SeqCst),
    }
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}
