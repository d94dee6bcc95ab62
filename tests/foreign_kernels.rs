//! PVH kernels other than the built-in one: writewatch boots them, and a
//! misbehaving one ends with a report and a distinct code, never a VMM crash.

mod common;

use common::pvh_elf::{abuse_record_doorbell, jump_to_mmio, print_and_exit, pvh_kernel};
use common::{code, kvm_available, run, stderr, stdout};

/// Boots a tiny PVH kernel made of `code` with `extra` options.
fn boot(code: &[u8], extra: &[&str]) -> std::process::Output {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, &pvh_kernel(code)).unwrap();
    let mut args = vec![
        "run",
        "--timeout",
        "30",
        "--kernel",
        file.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn boots_another_pvh_kernel_and_exits_with_its_code() {
    if !kvm_available() {
        return;
    }
    let out = boot(&print_and_exit(b"tiny pvh\n", 42), &[]);
    assert_eq!(code(&out), 42, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "tiny pvh\n");
}

#[test]
fn kvm_internal_error_exits_122_with_a_register_dump() {
    if !kvm_available() {
        return;
    }
    let out = boot(&jump_to_mmio(), &[]);
    assert_eq!(code(&out), 122, "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("KVM_EXIT_INTERNAL_ERROR"), "stderr: {err}");
    assert!(err.contains("rip=00000000d0000000"), "stderr: {err}");
}

#[test]
fn garbage_records_are_reported_and_the_guest_runs_on() {
    if !kvm_available() {
        return;
    }
    let out = boot(&abuse_record_doorbell(), &["--report", "-"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["bad_records"], 5, "{report}");
    assert_eq!(report["records"], 0);
    assert_eq!(
        stderr(&out).matches("bad record").count(),
        5,
        "{}",
        stderr(&out)
    );
}
