//! Helpers shared by the integration tests: running the real `writewatch`
//! binary against real KVM, and the KVM presence rule for CI.

#![allow(dead_code)]

pub mod migration;
pub mod observe;
pub mod pvh_elf;
pub mod x86;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

/// True when KVM is usable. Under `CI=true` a missing /dev/kvm fails the
/// test instead of skipping it: CI machines must have KVM.
pub fn kvm_available() -> bool {
    let present = Path::new("/dev/kvm").exists();
    if !present && std::env::var("CI").as_deref() == Ok("true") {
        panic!("/dev/kvm is missing, and CI=true requires KVM tests to run");
    }
    if !present {
        eprintln!("skipping: /dev/kvm is not present on this machine");
    }
    present
}

/// QEMU, the second PVH VMM the guest kernel is tested under.
pub const QEMU: &str = "qemu-system-x86_64";

/// True when QEMU is installed (see [`tool_available`]).
pub fn qemu_available() -> bool {
    tool_available(QEMU, "qemu-system-x86")
}

/// True when `command` runs. Under `CI=true` it must (.ci/run installs the
/// Debian `package`); elsewhere the test skips when it is missing.
pub fn tool_available(command: &str, package: &str) -> bool {
    let found = Command::new(command).arg("--version").output().is_ok();
    if !found && std::env::var("CI").as_deref() == Ok("true") {
        panic!("{command} is missing, and CI=true requires the tests that use it to run");
    }
    if !found {
        eprintln!("skipping: {command} is not installed (Debian: {package})");
    }
    found
}

/// The `writewatch` binary cargo built for these tests.
pub fn writewatch() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_writewatch"));
    command
        .env_remove("WRITEWATCH_KVM")
        .env_remove("RUST_BACKTRACE");
    command
}

/// Runs `writewatch` with `args`; returns its output.
pub fn run(args: &[&str]) -> Output {
    writewatch()
        .args(args)
        .output()
        .expect("starting writewatch")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn code(output: &Output) -> i32 {
    output.status.code().expect("writewatch ended by a signal")
}

/// Asserts the failure shape every bad input must have: exit `expected`,
/// exactly one line on stderr that mentions `needle`, and no panic text.
pub fn assert_one_line_error(output: &Output, expected: i32, needle: &str) {
    let err = stderr(output);
    assert_eq!(code(output), expected, "exit code; stderr: {err}");
    assert_eq!(
        err.lines().count(),
        1,
        "want exactly one stderr line, got: {err:?}"
    );
    assert!(
        err.contains(needle),
        "stderr {err:?} should mention {needle:?}"
    );
    for panic_text in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(!err.contains(panic_text), "panic text in {err:?}");
    }
}

/// The current and free counts of the host's 2 MiB hugetlb pool.
pub fn huge_pages() -> (u64, u64) {
    let read = |key: &str| -> u64 {
        std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (read("HugePages_Total:"), read("HugePages_Free:"))
}

/// Grows the host hugetlb pool by `extra` pages and restores the old size
/// when dropped.
pub struct HugePagePool {
    old: String,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl HugePagePool {
    pub fn grow_by(extra: u64) -> Self {
        let old = std::fs::read_to_string(NR_HUGEPAGES).expect("reading nr_hugepages");
        let (total, _) = huge_pages();
        std::fs::write(NR_HUGEPAGES, format!("{}", total + extra))
            .expect("writing /proc/sys/vm/nr_hugepages (the hugetlb test needs root)");
        HugePagePool { old }
    }
}

impl Drop for HugePagePool {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.old.trim());
    }
}

/// One API request to the VMM serving `sock`: the status and the JSON body.
pub fn api_call(sock: &Path, method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let reply = writewatch::api::client::call(
        sock,
        method,
        url,
        body.as_ref(),
        Some(Duration::from_secs(60)),
    )
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    (reply.status, reply.body)
}
