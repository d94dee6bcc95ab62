//! The control API over a real Unix socket, against a running guest that
//! keeps writing: every endpoint, the GetWriteWatch semantics with the VM
//! paused (so the dirty set holds still), the errors a client can provoke,
//! `writewatch ctl`, and SIGINT/SIGTERM ending the VMM cleanly.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{assert_one_line_error, code, kvm_available, run, stderr, writewatch};
use serde_json::{Value, json};

/// A `writewatch run --api-sock` in the background.
struct Vmm {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
    report: PathBuf,
    records: PathBuf,
}

impl Vmm {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let report = dir.path().join("report.json");
        let records = dir.path().join("records.jsonl");
        let child = writewatch()
            .args([
                "run",
                "--api-sock",
                sock.to_str().unwrap(),
                "--timeout",
                "120",
            ])
            .args([
                "--report",
                report.to_str().unwrap(),
                "--records",
                records.to_str().unwrap(),
            ])
            .args(["--cmdline", "mode=workload workload=uniform wss=8M"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !sock.exists() {
            assert!(started.elapsed() < Duration::from_secs(30), "no API socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Vmm {
            child,
            sock,
            _dir: dir,
            report,
            records,
        }
    }

    fn call(&self, method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
        common::api_call(&self.sock, method, url, body)
    }

    fn ok(&self, method: &str, url: &str, body: Option<Value>) -> Value {
        let (status, body) = self.call(method, url, body);
        assert_eq!(status, 200, "{method} {url}: {body}");
        body
    }

    fn status(&self, method: &str, url: &str, body: Option<Value>) -> u16 {
        let (status, body) = self.call(method, url, body);
        assert!(
            body["error"].is_string() || status == 200,
            "errors are JSON: {body}"
        );
        status
    }

    /// Sends `signal` and returns the exit code and stderr.
    fn signal(mut self, signal: i32) -> (i32, String, Self) {
        // SAFETY: kill(2) with our own child's pid, which is not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.code().expect("exited, not killed"), err, self)
    }
}

fn addresses(body: &Value) -> Vec<u64> {
    body["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_u64().unwrap())
        .collect()
}

#[test]
fn the_api_serves_get_and_reset_write_watch_with_windows_semantics() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::start(&[]);
    let info = vmm.ok("GET", "/vm", None);
    assert_eq!(info["state"], "running");
    assert_eq!(info["write_watch"]["tracking"], Value::Null);
    let ram = json!({"start": 0, "len": info["mem_bytes"]});
    // Before tracking starts, and with the wrong source: invalid parameter.
    assert_eq!(
        vmm.status("POST", "/write-watch/get", Some(ram.clone())),
        400
    );
    assert_eq!(
        vmm.status("PUT", "/write-watch", Some(json!({"source": "ring"}))),
        400
    );
    assert_eq!(
        vmm.status("PUT", "/write-watch", Some(json!({"source": "laser"}))),
        400
    );
    vmm.ok("PUT", "/write-watch", Some(json!({"source": "bitmap"})));
    assert_eq!(vmm.status("PUT", "/write-watch", None), 409);
    std::thread::sleep(Duration::from_millis(300));

    // Paused, the dirty set holds still: a get without reset sees A; a get
    // with reset and max_count 3 returns and resets only the first 3; the
    // rest stay marked.
    vmm.ok("PATCH", "/vm", Some(json!({"state": "paused"})));
    assert_eq!(
        vmm.status("PATCH", "/vm", Some(json!({"state": "paused"}))),
        409
    );
    let all = addresses(&vmm.ok("POST", "/write-watch/get", Some(ram.clone())));
    assert!(all.len() > 10, "the workload wrote pages: {all:?}");
    assert!(all.windows(2).all(|w| w[0] < w[1]), "ascending");
    let mut limited = ram.clone();
    limited["reset"] = json!(true);
    limited["max_count"] = json!(3);
    let first = vmm.ok("POST", "/write-watch/get", Some(limited));
    assert_eq!(first["count"], 3);
    assert_eq!(first["granularity"], 4096);
    assert_eq!(addresses(&first), all[..3]);
    let rest = addresses(&vmm.ok("POST", "/write-watch/get", Some(ram.clone())));
    assert_eq!(rest, all[3..]);
    // ResetWriteWatch over exactly one page leaves the others.
    vmm.ok(
        "POST",
        "/write-watch/reset",
        Some(json!({"start": rest[0], "len": 4096})),
    );
    let after = addresses(&vmm.ok("POST", "/write-watch/get", Some(ram.clone())));
    assert_eq!(after, rest[1..]);
    let ranges = vmm.ok(
        "POST",
        "/write-watch/get",
        Some(json!({"start": 0, "len": info["mem_bytes"], "format": "ranges"})),
    );
    let covered: u64 = ranges["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[1].as_u64().unwrap())
        .sum();
    assert_eq!(covered, after.len() as u64 * 4096);

    // Bad ranges and counts: refused whole, nothing reset.
    for bad in [
        json!({"start": 1, "len": 4096}),
        json!({"start": 0, "len": 0}),
        json!({"start": 0, "len": 4095}),
        json!({"start": info["mem_bytes"], "len": 4096}),
        json!({"start": 0, "len": info["mem_bytes"].as_u64().unwrap() + 4096}),
        json!({"start": 0, "len": 4096, "max_count": 0}),
        json!({"start": "0xzz", "len": 4096}),
        json!({"start": 0}),
    ] {
        assert_eq!(
            vmm.status("POST", "/write-watch/get", Some(bad.clone())),
            400,
            "{bad}"
        );
    }
    assert_eq!(
        addresses(&vmm.ok("POST", "/write-watch/get", Some(ram.clone()))),
        after
    );

    // Running again, the guest writes again.
    vmm.ok("PATCH", "/vm", Some(json!({"state": "running"})));
    assert_eq!(
        vmm.status("PATCH", "/vm", Some(json!({"state": "running"}))),
        409
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut reset_all = ram.clone();
    reset_all["reset"] = json!(true);
    assert!(!addresses(&vmm.ok("POST", "/write-watch/get", Some(reset_all))).is_empty());
    let stats = vmm.ok("GET", "/vm/stats", None);
    assert!(
        stats["write_watch"]["harvests"].as_u64().unwrap() >= 6,
        "{stats}"
    );
    assert!(stats["vm_exits_total"].as_u64().unwrap() > 0, "{stats}");
    let rate = vmm.ok("GET", "/dirty-rate?period_ms=300", None);
    assert!(rate["mib_per_s"].as_f64().unwrap() > 0.0, "{rate}");

    // Virtual ranges need a page table the guest reported.
    assert_eq!(vmm.ok("GET", "/processes", None), json!([]));
    let va = json!({"cr3": "0x123000", "start": "0x400000", "len": 4096});
    assert_eq!(vmm.status("PUT", "/write-watch/va", Some(va)), 400);
    assert_eq!(
        vmm.status(
            "PUT",
            "/write-watch/va",
            Some(json!({"pid": 7, "start": 0, "len": 4096}))
        ),
        400
    );

    // Stopping tracking: gets are refused again; starting again works.
    vmm.ok("DELETE", "/write-watch", None);
    assert_eq!(
        vmm.status("POST", "/write-watch/get", Some(ram.clone())),
        400
    );
    assert_eq!(vmm.status("DELETE", "/write-watch", None), 400);
    vmm.ok("PUT", "/write-watch", Some(json!({"initial": "dirty"})));
    // Every page, as a list of addresses: a body of hundreds of KiB.
    let everything = vmm.ok("POST", "/write-watch/get", Some(ram.clone()));
    let pages = info["mem_bytes"].as_u64().unwrap() / 4096;
    assert_eq!(everything["count"].as_u64(), Some(pages));
    assert_eq!(addresses(&everything).len() as u64, pages);

    let (code, err, vmm) = vmm.signal(libc::SIGTERM);
    assert_eq!(code, 143, "stderr: {err}");
    assert!(!vmm.sock.exists(), "the socket is removed");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&vmm.report).unwrap()).unwrap();
    assert_eq!(report["stop_reason"], "signal");
    assert_eq!(report["exit_code"], 143);
    assert!(
        std::fs::read_to_string(&vmm.records)
            .unwrap()
            .contains(r#""type":"workload""#)
    );
}

#[test]
fn whatever_a_client_sends_the_guest_keeps_running() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::start(&[]);
    assert_eq!(vmm.status("GET", "/nowhere", None), 404);
    assert_eq!(vmm.status("DELETE", "/vm", None), 405);
    assert_eq!(vmm.status("POST", "/write-watch/get", None), 400);
    assert_eq!(
        vmm.status("PATCH", "/vm", Some(json!({"state": "asleep"}))),
        400
    );
    assert_eq!(vmm.status("GET", "/dirty-rate?period_ms=0", None), 400);
    // Raw bytes: garbage, a request cut off mid-way, a 1 GiB body.
    let raw = |bytes: &[u8], read: bool| {
        let mut s = UnixStream::connect(&vmm.sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(bytes);
        let mut answer = Vec::new();
        if read {
            let _ = s.read_to_end(&mut answer);
        }
        String::from_utf8_lossy(&answer).into_owned()
    };
    raw(b"\x00\x01\x02 not http at all\r\n\r\n", true);
    raw(
        b"POST /write-watch/get HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"sta",
        false,
    );
    let huge = raw(
        b"POST /write-watch/get HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n{\"start\":0",
        true,
    );
    assert!(
        huge.starts_with("HTTP/1.1 413"),
        "a 1 GiB body is refused: {huge:?}"
    );
    let info = vmm.ok("GET", "/vm", None);
    assert_eq!(info["state"], "running");
    let (code, err, _) = vmm.signal(libc::SIGINT);
    assert_eq!(code, 130, "stderr: {err}");
    assert!(err.contains("stopped by signal"), "{err}");
}

#[test]
fn ctl_drives_the_api_from_the_command_line() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::start(&["--dirty-ring-size", "4096"]);
    let sock = vmm.sock.to_str().unwrap();
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "--api-sock", sock];
        all.extend_from_slice(args);
        run(&all)
    };
    let out = ctl(&["info"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["write_watch"]["available_source"], "ring");
    assert_eq!(code(&ctl(&["start"])), 0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(code(&ctl(&["pause"])), 0);
    let out = ctl(&["get", "--start", "0", "--len", "64M", "--reset"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(
        listed > 0 && stderr(&out).contains(&format!("{listed} pages written")),
        "{}",
        stderr(&out)
    );
    // Paused and just reset: nothing more.
    let out = ctl(&["--json", "get", "--start", "0", "--len", "64M"]);
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["count"], 0, "{body}");
    assert_eq!(code(&ctl(&["resume"])), 0);
    let out = ctl(&["get", "--start", "1", "--len", "4096"]);
    assert_one_line_error(&out, 1, "not page-aligned");
    let out = ctl(&["dirty-rate", "--period", "0.3"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = ctl(&["stats"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let (code, _, _) = vmm.signal(libc::SIGTERM);
    assert_eq!(code, 143);
    let out = run(&["ctl", "--api-sock", "/nonexistent/api.sock", "info"]);
    assert_one_line_error(&out, 125, "cannot connect");
}

#[test]
fn a_socket_path_that_exists_or_cannot_be_created_is_refused_before_boot() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let taken = dir.path().join("taken");
    std::fs::write(&taken, b"someone's file").unwrap();
    let out = run(&["run", "--api-sock", taken.to_str().unwrap()]);
    assert_one_line_error(&out, 125, "already exists");
    assert_eq!(
        std::fs::read(&taken).unwrap(),
        b"someone's file",
        "left alone"
    );
    let out = run(&["run", "--api-sock", "/nonexistent-dir/api.sock"]);
    assert_one_line_error(&out, 125, "cannot create the socket");
    assert!(!Path::new("/nonexistent-dir").exists());
}

#[test]
fn an_output_that_fails_mid_run_is_reported_and_fails_the_run() {
    if !kvm_available() {
        return;
    }
    // /dev/full takes the open and fails every write; /proc/version too.
    for path in ["/dev/full", "/proc/version"] {
        let out = run(&["run", "--records", path, "--timeout", "60"]);
        assert_eq!(code(&out), 121, "{path}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--records"),
            "{path}: {}",
            stderr(&out)
        );
        let out = run(&["run", "--report", path, "--timeout", "60"]);
        assert_eq!(code(&out), 121, "{path}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--report"),
            "{path}: {}",
            stderr(&out)
        );
    }
    // `watch` prints its results on stdout: losing them fails the run too.
    let out = writewatch()
        .args([
            "watch",
            "--intervals",
            "1",
            "--interval",
            "0.3",
            "--wss",
            "4M",
        ])
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    assert_eq!(code(&out), 121, "{}", stderr(&out));
    assert!(stderr(&out).contains("stdout"), "{}", stderr(&out));
    // An unknown ring size or source is a usage error before boot.
    let out = run(&["run", "--dirty-ring-size", "1000"]);
    assert_one_line_error(&out, 125, "power of two");
    let out = run(&["run", "--dirty-ring-size", "1048576"]);
    assert_one_line_error(&out, 125, "too large");
    let out = run(&["watch", "--source", "laser"]);
    assert_one_line_error(&out, 2, "laser");
    let out = run(&["watch", "--source", "bitmap", "--dirty-ring-size", "4096"]);
    assert_one_line_error(&out, 2, "--dirty-ring-size");
}
