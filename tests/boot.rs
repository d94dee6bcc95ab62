//! Boots the real guest kernel under real KVM: self-tests on 1 and 4 vCPUs
//! and on hugetlb-backed RAM, the default guest, and the panic, fault,
//! triple-fault and timeout paths with their exit codes and reports.

mod common;

use std::sync::Mutex;

use common::{HugePagePool, code, kvm_available, run, stderr, stdout};

/// Tests that change the host hugetlb pool must not overlap.
static HUGETLB: Mutex<()> = Mutex::new(());

/// Runs the self-tests and returns the console.
fn assert_selftest_passes(extra: &[&str]) -> String {
    let mut args = vec!["selftest", "--timeout", "120"];
    args.extend_from_slice(extra);
    let out = run(&args);
    let (console, err) = (stdout(&out), stderr(&out));
    assert_eq!(
        code(&out),
        0,
        "selftest {extra:?} failed\nconsole:\n{console}\nstderr:\n{err}"
    );
    assert!(
        console.contains("ok 1 - "),
        "no TAP on the console:\n{console}"
    );
    assert!(
        !console.contains("not ok"),
        "a failing TAP line:\n{console}"
    );
    assert!(
        err.contains("passed, 0 failed"),
        "no verdict on stderr: {err}"
    );
    console
}

#[test]
fn selftest_passes_on_one_vcpu() {
    if kvm_available() {
        assert_selftest_passes(&["--vcpus", "1"]);
    }
}

#[test]
fn selftest_passes_on_four_vcpus() {
    if kvm_available() {
        assert_selftest_passes(&["--vcpus", "4"]);
    }
}

/// The mode override: all of ring 0, as on hardware KVM, works here too.
#[test]
fn selftest_passes_in_ring0_mode_on_two_vcpus() {
    if kvm_available() {
        let console = assert_selftest_passes(&["--vcpus", "2", "--cmdline", "kernel_mode=ring0"]);
        assert!(console.contains("kernel mode ring0"), "{console}");
    }
}

/// The ring-3 kernel context on the most vCPUs the VMM allows: ticks and
/// shootdown IPIs reach every CPU while it is in the context.
#[test]
fn selftest_passes_in_ring3_mode_on_64_vcpus() {
    if kvm_available() {
        let console = assert_selftest_passes(&["--vcpus", "64", "--cmdline", "kernel_mode=ring3"]);
        assert!(console.contains("kernel mode ring3"), "{console}");
    }
}

#[test]
fn selftest_passes_with_the_invariant_checker_after_every_mm_operation() {
    if kvm_available() {
        assert_selftest_passes(&["--vcpus", "2", "--cmdline", "mm_check"]);
    }
}

#[test]
fn ram_split_around_the_mmio_hole_is_all_seen() {
    if !kvm_available() {
        return;
    }
    assert_selftest_passes(&["--mem", "5G", "--vcpus", "2"]);
    // The banner counts the RAM the guest found in its PVH memory map: all of
    // 5 GiB but the legacy hole below 1 MiB, so RAM above 4 GiB was seen.
    let out = run(&["run", "--mem", "5G", "--timeout", "60"]);
    let console = stdout(&out);
    let mib: u64 = console
        .split(" MiB RAM")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no RAM size in the banner: {console}"));
    assert!(
        (5119..=5120).contains(&mib),
        "guest saw {mib} MiB: {console}"
    );
}

#[test]
fn selftest_passes_on_hugetlb_backed_ram() {
    if !kvm_available() {
        return;
    }
    let _serial = HUGETLB.lock().unwrap_or_else(|e| e.into_inner());
    let _pool = HugePagePool::grow_by(64);
    assert_selftest_passes(&["--backing", "hugetlb", "--mem", "128M", "--vcpus", "2"]);
}

#[test]
fn default_guest_runs_a_user_program_and_reports() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("report.json");
    let records_path = dir.path().join("records.jsonl");
    let out = run(&[
        "run",
        "--timeout",
        "60",
        "--report",
        report_path.to_str().unwrap(),
        "--records",
        records_path.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).contains("hello from ring 3"),
        "console: {}",
        stdout(&out)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["stop_reason"], "guest-exit");
    let first = report["first_output_ms"].as_f64().expect("first_output_ms");
    let ready = report["ready_ms"].as_f64().expect("ready_ms");
    let wall = report["wall_ms"].as_f64().unwrap();
    assert!(0.0 < first && first <= ready && ready <= wall, "{report}");
    assert!(report["vm_exits"]["io_out"].as_u64().unwrap() > 0);
    // The guest tells its platform: kvm_pvm exactly when the host runs it.
    let on_pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    assert_eq!(
        report["guest_platform"],
        if on_pvm { "kvm_pvm" } else { "other" },
        "{report}"
    );
    // And runs its kernel work where it is cheap: in the ring-3 kernel
    // context on kvm_pvm, in ring 0 elsewhere.
    assert_eq!(
        report["guest_kernel_mode"],
        if on_pvm { "ring3" } else { "ring0" },
        "{report}"
    );
    let records = std::fs::read_to_string(&records_path).unwrap();
    assert!(
        records.lines().any(|l| l.contains(r#""type":"ready""#)),
        "records: {records}"
    );
}

#[test]
fn cmdline_reaches_the_guest() {
    if !kvm_available() {
        return;
    }
    let out = run(&["run", "--timeout", "60", "--cmdline", "marker=banana42"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).contains("marker=banana42"),
        "console: {}",
        stdout(&out)
    );
}

#[test]
fn kernel_panic_exits_3_with_a_message() {
    if !kvm_available() {
        return;
    }
    let out = run(&["run", "--timeout", "60", "--cmdline", "mode=panic"]);
    assert_eq!(code(&out), 3, "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).to_lowercase().contains("panic"),
        "console: {}",
        stdout(&out)
    );
}

#[test]
fn unexpected_kernel_exception_exits_4_with_a_report() {
    if !kvm_available() {
        return;
    }
    let out = run(&["run", "--timeout", "60", "--cmdline", "mode=fault"]);
    assert_eq!(code(&out), 4, "stderr: {}", stderr(&out));
    let console = stdout(&out).to_lowercase();
    for field in ["vector", "rip", "cr2", "error"] {
        assert!(console.contains(field), "no {field} in: {console}");
    }
}

#[test]
fn triple_fault_exits_123_with_a_register_dump() {
    if !kvm_available() {
        return;
    }
    let out = run(&["run", "--timeout", "60", "--cmdline", "mode=triple"]);
    assert_eq!(code(&out), 123, "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("triple-faulted") && err.contains("rip="),
        "stderr: {err}"
    );
}

#[test]
fn timeout_exits_124_with_every_vcpu_dumped() {
    if !kvm_available() {
        return;
    }
    let out = run(&[
        "run",
        "--vcpus",
        "2",
        "--timeout",
        "2",
        "--cmdline",
        "mode=hang",
    ]);
    assert_eq!(code(&out), 124, "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("--timeout"), "stderr: {err}");
    assert!(
        err.contains("vCPU 0") && err.contains("vCPU 1"),
        "stderr: {err}"
    );
    assert_eq!(err.matches("rip=").count(), 2, "stderr: {err}");
}

/// `hugepages=N` (per `hugepagesz=`) fills the guest's hugetlb pools at
/// boot and reports each in a `hugetlb` record; a size RAM cannot hold
/// leaves a smaller pool, and the guest boots all the same.
#[test]
fn hugepages_on_the_command_line_fill_the_guest_pools() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let records_path = dir.path().join("records.jsonl");
    let out = run(&[
        "run",
        "--timeout",
        "60",
        "--mem",
        "256M",
        "--cmdline",
        "hugepages=8 hugepagesz=1G hugepages=100000 hugetlb_free_vmemmap=on",
        "--records",
        records_path.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let records = std::fs::read_to_string(&records_path).unwrap();
    let pools: Vec<serde_json::Value> = records
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["type"] == "hugetlb")
        .collect();
    assert_eq!(pools.len(), 2, "records: {records}");
    assert_eq!(pools[0]["size_kb"], 2048);
    assert_eq!(
        (pools[0]["total"].as_u64(), pools[0]["free"].as_u64()),
        (Some(8), Some(8))
    );
    assert_eq!(pools[1]["size_kb"], 1 << 20);
    assert_eq!(pools[1]["requested"], 100000);
    assert_eq!(
        pools[1]["total"], 0,
        "256 MiB hold no 1 GiB page: {records}"
    );
}
