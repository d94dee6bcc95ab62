//! The built-in kernel is a plain PVH ELF, so a second, independent VMM boots
//! it too: QEMU (`-kernel`, TCG) runs the same self-tests and ends through
//! `isa-debug-exit` at the same port. Under CI=true QEMU must be installed
//! (.ci/run installs it); elsewhere the test skips when it is missing.

use std::process::Command;

use writewatch::guest_image::GUEST_KERNEL;

mod common;

use common::{QEMU, qemu_available};

#[test]
fn qemu_boots_the_built_in_kernel_and_its_selftests_pass() {
    selftests_pass_under_qemu("pc", 2, None);
}

/// The ring-3 kernel context is plain x86-64 (the user bit, `iretq`,
/// `int3`), so it works on any x86 machine, not only on kvm_pvm.
#[test]
fn qemu_runs_the_selftests_with_the_ring3_kernel_context_on_2_cpus() {
    selftests_pass_under_qemu("q35", 2, Some("ring3"));
}

/// q35's memory map has nine entries, more than the four the writewatch VMM
/// gives: the kernel reads the loader's table in place, whatever its size.
/// The CPUs come from QEMU's ACPI MADT: no command-line word but the mode.
#[test]
fn qemu_q35_and_its_larger_memory_map_pass_the_selftests_on_4_cpus() {
    selftests_pass_under_qemu("q35", 4, None);
}

/// `kernel_mode`: `None` for the platform's default (ring 0 under TCG).
fn selftests_pass_under_qemu(machine: &str, cpus: u32, kernel_mode: Option<&str>) {
    if !qemu_available() {
        return;
    }
    let mut kernel = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut kernel, GUEST_KERNEL).unwrap();
    let out = Command::new("timeout")
        .args([
            "300", QEMU, "-machine", machine, "-accel", "tcg", "-cpu", "max", "-m", "256M",
        ])
        .args(["-smp", &cpus.to_string()])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .arg("-append")
        .arg(match kernel_mode {
            Some(mode) => format!("mode=selftest kernel_mode={mode}"),
            None => "mode=selftest".to_string(),
        })
        .arg("-kernel")
        .arg(kernel.path())
        .output()
        .expect("running qemu");
    let console = String::from_utf8_lossy(&out.stdout);
    // isa-debug-exit turns the guest's code v into (v << 1) | 1.
    assert_eq!(
        out.status.code(),
        Some(1),
        "guest did not exit 0 under QEMU ({machine}):\n{console}"
    );
    assert!(console.contains("ok 1 - "), "no TAP:\n{console}");
    assert!(
        console.contains(&format!("writewatch guest kernel: {cpus} cpus")),
        "not {cpus} CPUs:\n{console}"
    );
    // Not kvm_pvm: its identification MSR raises #GP under TCG, and the
    // default mode elsewhere is ring 0.
    let mode = kernel_mode.unwrap_or("ring0");
    assert!(
        console.contains(&format!("platform other, kernel mode {mode}")),
        "{console}"
    );
    assert!(
        !console.contains("not ok"),
        "a test failed under QEMU ({machine}):\n{console}"
    );
    assert!(
        console.contains("passed, 0 failed"),
        "no summary:\n{console}"
    );
}
