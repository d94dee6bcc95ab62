//! Scenarios in the guest: one VM of this same binary (`writewatch run`)
//! whose `conform` program reads them from standard input (`--stdin`)
//! and runs each as a process of the guest kernel, printing its
//! transcript between `case NAME` and `end NAME`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use super::{Outcome, Run, Scenario};

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// Why the guest did not run the scenarios to the end.
pub enum Stopped {
    /// It could not start or failed: one line.
    Failed(String),
    /// SIGINT or SIGTERM stopped it (cleanly).
    Signal(i32),
}

/// `conform`'s argument for "every case on standard input".
const CONFORM_STDIN: u64 = 1 << 33;
/// vCPUs of the VM: a scenario's processes take turns, and two CPUs show
/// what one would hide (a step of one process seen from another CPU).
const VCPUS: &str = "2";

/// Runs `cmd` to its end with its output collected, as `output()` does,
/// but with SIGINT and SIGTERM blocked here: one that reaches this process
/// alone (a `kill`) is passed to the guest, which stops cleanly, and one
/// sent to the whole group (Ctrl-C) leaves this process alive to say so.
fn run_forwarding_signals(cmd: &mut Command) -> std::io::Result<std::process::Output> {
    crate::signals::block_termination_signals();
    let child = cmd.stdout(Stdio::piped()).spawn()?;
    let pid = child.id() as libc::pid_t;
    let waiter = std::thread::spawn(move || child.wait_with_output());
    while !waiter.is_finished() {
        if let Some(sig) = crate::signals::take_pending() {
            // SAFETY: kill only sends a signal to our own child.
            unsafe { libc::kill(pid, sig) };
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    waiter
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the guest's waiter panicked")))
}

/// The host's lowest mappable address: the guest takes the same, so that
/// both sides refuse the same low mappings.
pub fn host_mmap_min_addr() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/mmap_min_addr")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65536)
}

/// Runs `scenarios` in the guest, one VM per `soft_dirty=` setting they
/// need; `mode` picks the kernel mode (the kernel's own choice if `None`).
pub fn run(
    scenarios: &[Scenario],
    mode: Option<&str>,
    timeout: Option<f64>,
) -> Result<Run, Stopped> {
    let mut transcripts = BTreeMap::new();
    let mut side = String::from("the guest kernel");
    for soft_dirty in ["off", "on", "precise"] {
        let group: Vec<&Scenario> = scenarios
            .iter()
            .filter(|s| s.guest_soft_dirty() == soft_dirty)
            .collect();
        if group.is_empty() {
            continue;
        }
        let (text, banner) = boot(&group, soft_dirty, mode, timeout)?;
        if let Some(rest) = banner.split(", kernel mode ").nth(1) {
            side = format!(
                "the guest kernel ({})",
                rest.split(',').next().unwrap_or(rest)
            );
        }
        transcripts.append(&mut self::transcripts(&text));
    }
    let outcomes = scenarios
        .iter()
        .map(|s| match transcripts.remove(&s.name) {
            Some(lines) => Outcome::Ran(lines),
            None => Outcome::NotRun("the guest printed no transcript for it".into()),
        })
        .collect();
    Ok(Run { side, outcomes })
}

/// Boots one VM that runs `group`; its console and first line.
fn boot(
    group: &[&Scenario],
    soft_dirty: &str,
    mode: Option<&str>,
    timeout: Option<f64>,
) -> Result<(String, String), Stopped> {
    let failed = Stopped::Failed;
    let mut input = tempfile::NamedTempFile::new().map_err(|e| {
        failed(format!(
            "cannot create a temporary file for the scenarios: {e}"
        ))
    })?;
    for s in group {
        input.write_all(s.text.as_bytes()).map_err(|e| {
            failed(format!(
                "cannot write the scenarios to a temporary file: {e}"
            ))
        })?;
    }
    let exe =
        std::env::current_exe().map_err(|e| failed(format!("cannot find this program: {e}")))?;
    let mode_word = mode
        .map(|m| format!(" kernel_mode={m}"))
        .unwrap_or_default();
    // No swap: the host has none, and pages that go to swap show there.
    let cmdline = format!(
        "mode=run program=conform swap=0 mmap_min_addr={} soft_dirty={soft_dirty}{mode_word} arg={CONFORM_STDIN}",
        host_mmap_min_addr()
    );
    let mut cmd = Command::new(exe);
    cmd.args(["run", "--vcpus", VCPUS, "--cmdline", &cmdline, "--stdin"])
        .arg(input.path());
    if let Some(t) = timeout {
        cmd.args(["--timeout", &t.to_string()]);
    }
    let out = run_forwarding_signals(cmd.stdin(Stdio::null()).stderr(Stdio::piped()))
        .map_err(|e| failed(format!("cannot start the guest: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Ctrl-C or SIGTERM: the VM stopped cleanly with 128 + the signal.
    if let Some(sig @ (SIGINT | SIGTERM)) = out.status.code().map(|c| c - 128) {
        return Err(Stopped::Signal(sig));
    }
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let last = why
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(failed(format!(
            "the guest that ran the scenarios ended with {}: {last}",
            out.status
        )));
    }
    let banner = text.lines().next().unwrap_or("").to_string();
    Ok((text, banner))
}

/// The transcripts `conform` printed (between `case NAME` and `end
/// NAME`), by case or scenario name.
pub fn transcripts(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut all = BTreeMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("case ") {
            current = Some((name.to_string(), Vec::new()));
        } else if let Some(name) = line.strip_prefix("end ") {
            if let Some((n, lines)) = current.take().filter(|(n, _)| n == name) {
                all.insert(n, lines);
            }
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(line.to_string());
        }
    }
    all
}
