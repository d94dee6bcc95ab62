//! Two real `writewatch` processes and what passes between them: a source
//! running a checking guest workload with its API socket, a destination
//! waiting with `run --incoming`, `writewatch migrate` between them, and a
//! relay that can damage the stream in flight.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::writewatch;

/// One `writewatch run` in the background, with its files in a temp dir.
pub struct Side {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub report: PathBuf,
    pub records: PathBuf,
}

/// What a side left when it ended.
pub struct Ended {
    pub code: i32,
    pub stderr: String,
    pub report: Value,
    pub records: Vec<Value>,
    /// What the guest printed on this side's console.
    pub console: String,
}

impl Ended {
    /// The guest's own verdict: its `workload_check` record.
    pub fn check(&self) -> &Value {
        self.records
            .iter()
            .find(|r| r["type"] == "workload_check")
            .unwrap_or_else(|| panic!("no workload_check record; stderr: {}", self.stderr))
    }

    /// Asserts the guest ran here to its end and found its memory intact.
    pub fn assert_intact(&self) {
        assert_eq!(self.code, 0, "stderr: {}", self.stderr);
        let check = self.check();
        assert_eq!(check["mismatches"], 0, "{check}");
        assert_eq!(check["checked"], check["pages"], "{check}");
        assert!(check["pages"].as_u64().unwrap() > 0, "{check}");
    }
}

impl Side {
    /// `writewatch run` with the side's files and `args`.
    pub fn spawn_with(args: &[&str]) -> Side {
        Side::spawn_in(tempfile::tempdir().unwrap(), args)
    }

    fn spawn_in(dir: tempfile::TempDir, args: &[&str]) -> Side {
        let sock = dir.path().join("api.sock");
        let report = dir.path().join("report.json");
        let records = dir.path().join("records.jsonl");
        let child = writewatch()
            .arg("run")
            .args(["--api-sock", sock.to_str().unwrap()])
            .args(["--report", report.to_str().unwrap()])
            .args(["--records", records.to_str().unwrap()])
            .args(["--timeout", "240"])
            .args(args)
            .stdout(std::fs::File::create(dir.path().join("console.txt")).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Side {
            child,
            dir,
            sock,
            report,
            records,
        }
    }

    /// A source running `workload` words (e.g. "workload=zipf wss=64M") with
    /// `check`, and `extra` VM options; waits until its workload runs.
    pub fn source(workload: &str, extra: &[&str]) -> Side {
        let cmdline = format!("mode=workload {workload} check");
        let mut args = vec!["--cmdline", cmdline.as_str()];
        args.extend_from_slice(extra);
        let side = Side::spawn_with(&args);
        side.wait_for_workload();
        side
    }

    /// A destination waiting at `unix:<its dir>/incoming.sock`.
    pub fn destination(extra: &[&str]) -> (Side, String) {
        let dir = tempfile::tempdir().unwrap();
        let at = format!("unix:{}", dir.path().join("incoming.sock").display());
        let mut args = vec!["--incoming", at.as_str()];
        args.extend_from_slice(extra);
        let side = Side::spawn_in(dir, &args);
        let path = PathBuf::from(&at[5..]);
        wait_for(|| path.exists(), "the destination's socket");
        (side, at)
    }

    pub fn call(&self, method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
        super::api_call(&self.sock, method, url, body)
    }

    /// Waits until the guest has announced its workload (after its fill).
    pub fn wait_for_workload(&self) {
        wait_for(|| self.sock.exists(), "the API socket");
        wait_for(
            || self.call("GET", "/workload", None).0 == 200,
            "the workload record",
        );
    }

    /// Tells the workload to stop; a checking one verifies and exits.
    pub fn stop_workload(&self) {
        wait_for(|| self.sock.exists(), "the API socket");
        let (status, body) = self.call(
            "PATCH",
            "/workload",
            Some(serde_json::json!({"stop": true})),
        );
        assert_eq!(status, 200, "{body}");
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to end (at most `limit`) and reads its files.
    pub fn wait(mut self, limit: Duration) -> Ended {
        let began = Instant::now();
        while self.running() {
            if began.elapsed() > limit {
                self.kill();
                panic!("the VMM did not end within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        let report = std::fs::read_to_string(&self.report)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let records = std::fs::read_to_string(&self.records)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let console =
            std::fs::read_to_string(self.dir.path().join("console.txt")).unwrap_or_default();
        Ended {
            code,
            stderr,
            report,
            records,
            console,
        }
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let began = Instant::now();
    while !ready() {
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "waited too long for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `writewatch migrate --api-sock <source> --to <to> <extra>`.
pub fn migrate(source: &Side, to: &str, extra: &[&str]) -> Output {
    writewatch()
        .args([
            "migrate",
            "--api-sock",
            source.sock.to_str().unwrap(),
            "--to",
            to,
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap()
}

/// The final migration status `migrate --json` printed.
pub fn status_of(output: &Output) -> Value {
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("null")).unwrap_or(Value::Null)
}

/// What the relay does to the source's stream.
#[derive(Clone, Copy, Debug)]
pub enum Damage {
    /// Pass everything.
    None,
    /// Flip one byte inside the payload of the `nth` frame of `kind`.
    Flip { kind: u8, nth: usize },
    /// Pass half of the first frame of `kind`, then close both ways.
    Cut { kind: u8 },
}

/// A relay between a source and a destination's Unix socket, parsing the
/// source's frames as they pass so it can damage one exactly.
pub struct Relay {
    pub at: String,
    _dir: tempfile::TempDir,
    thread: Option<JoinHandle<()>>,
    recorded: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Relay {
    pub fn start(to: &str, damage: Damage) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let target = PathBuf::from(to.strip_prefix("unix:").unwrap());
        let recorded: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
        let record = recorded.clone();
        let thread = std::thread::spawn(move || {
            let Ok((source, _)) = listener.accept() else {
                return;
            };
            let Ok(dest) = UnixStream::connect(&target) else {
                return;
            };
            relay(source, dest, damage, &record);
        });
        Relay {
            at: format!("unix:{}", path.display()),
            _dir: dir,
            thread: Some(thread),
            recorded,
        }
    }

    /// Keeps a copy of everything the source sent (see `recorded`).
    pub fn recording(self) -> Relay {
        *self.recorded.lock().unwrap() = Some(Vec::new());
        self
    }

    /// What the source sent, once the connection is over.
    pub fn recorded(mut self) -> Vec<u8> {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.recorded.lock().unwrap().take().unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay(
    mut source: UnixStream,
    mut dest: UnixStream,
    damage: Damage,
    record: &Mutex<Option<Vec<u8>>>,
) {
    let (mut back_from, mut back_to) = (dest.try_clone().unwrap(), source.try_clone().unwrap());
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut back_from, &mut back_to);
        let _ = back_to.shutdown(std::net::Shutdown::Write);
    });
    let _ = forward(&mut source, &mut dest, damage, record);
    let _ = dest.shutdown(std::net::Shutdown::Write);
    if matches!(damage, Damage::Cut { .. }) {
        let _ = source.shutdown(std::net::Shutdown::Both);
        let _ = dest.shutdown(std::net::Shutdown::Both);
    }
    let _ = back.join();
}

fn forward(
    source: &mut UnixStream,
    dest: &mut UnixStream,
    damage: Damage,
    record: &Mutex<Option<Vec<u8>>>,
) -> std::io::Result<()> {
    let keep = |bytes: &[u8]| {
        if let Some(copy) = record.lock().unwrap().as_mut() {
            copy.extend_from_slice(bytes);
        }
    };
    let mut magic = [0u8; 8];
    source.read_exact(&mut magic)?;
    keep(&magic);
    dest.write_all(&magic)?;
    let mut seen = std::collections::HashMap::<u8, usize>::new();
    loop {
        let mut head = [0u8; 5];
        source.read_exact(&mut head)?;
        let len = u32::from_le_bytes(head[1..].try_into().unwrap()) as usize;
        let mut rest = vec![0u8; len + 4];
        source.read_exact(&mut rest)?;
        let count = seen.entry(head[0]).or_default();
        match damage {
            Damage::Flip { kind, nth } if kind == head[0] && *count == nth && len > 0 => {
                rest[len / 2] ^= 0x40;
            }
            Damage::Cut { kind } if kind == head[0] => {
                dest.write_all(&head)?;
                dest.write_all(&rest[..len / 2])?;
                return Ok(());
            }
            _ => {}
        }
        *count += 1;
        keep(&head);
        keep(&rest);
        dest.write_all(&head)?;
        dest.write_all(&rest)?;
        // The source's last frame before it waits for the ack.
        if head[0] == b'E' && record.lock().unwrap().is_some() {
            // Keep relaying (the go frame) but record no more.
            let mut tail = Vec::new();
            let _ = std::io::copy(source, &mut tail).map(|_| dest.write_all(&tail));
            return Ok(());
        }
    }
}

/// The path of a Unix address.
pub fn path_of(at: &str) -> &Path {
    Path::new(at.strip_prefix("unix:").unwrap())
}
