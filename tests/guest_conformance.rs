//! The conformance edge cases (`resources/conformance/cases.txt`) run by a
//! guest process from ring 3 on real KVM (`conform`: the real system
//! calls, page faults, signal handler and forks of the guest kernel) and
//! by real Linux processes on the host must print the same transcripts:
//! results, VMA layouts and resident pages after every step
//! (docs/CONFORMANCE.md). `tests/linux_diff` in guest-mm compares the MM
//! core itself with Linux; this compares the whole guest.
//!
//! Its own `main`, because the test binary runs again as the Linux
//! oracle (`--oracle`).

#[path = "../guest-kernel/mm/tests/linux_diff/backend.rs"]
#[allow(dead_code)]
mod backend;
mod common;
#[path = "../guest-kernel/mm/tests/linux_diff/oracle.rs"]
mod oracle;
#[path = "../guest-kernel/user/src/probe.rs"]
mod probe;
#[path = "../guest-kernel/user/src/script.rs"]
#[allow(dead_code)]
mod script;
#[path = "../guest-kernel/user/src/writewatch.rs"]
mod writewatch;

use std::collections::BTreeMap;

const TABLE: &str = include_str!("../resources/conformance/cases.txt");

/// `conform`'s argument for every case but the heavy ones.
const LIGHT: u64 = 1 << 32;

/// The transcripts the guest printed, by case name.
fn guest_transcripts(kernel_mode: &str, only: Option<usize>) -> BTreeMap<String, Vec<String>> {
    let light = kernel_mode == "ring0";
    let arg = match only {
        Some(i) => format!(" arg={}", i + 1),
        None if light => format!(" arg={LIGHT}"),
        None => String::new(),
    };
    // No swap: the host has none, and pages that go to swap show there.
    // The host's lowest mappable address.
    let min_addr = ::writewatch::scenario::host_mmap_min_addr();
    // HVO on in one mode, off in the other: it must change nothing.
    let hvo = if kernel_mode == "ring3" {
        " hugetlb_free_vmemmap=on"
    } else {
        ""
    };
    let cmdline = format!(
        "mode=run program=conform kernel_mode={kernel_mode} swap=0 mmap_min_addr={min_addr}{hvo}{arg}"
    );
    let out = common::run(&["run", "--vcpus", "2", "--cmdline", &cmdline]);
    assert_eq!(
        common::code(&out),
        0,
        "conform failed; stderr: {}",
        common::stderr(&out)
    );
    ::writewatch::scenario::transcripts(&common::stdout(&out))
}

/// The transcript Linux gives for `case`.
fn linux_transcript(case: &script::Case<'_>) -> Vec<String> {
    let mut linux = backend::Runner::new(oracle::Oracle::start());
    let mut lines = Vec::new();
    for (k, step) in case.steps().enumerate() {
        let step = step.unwrap_or_else(|e| panic!("case {}: {e}", case.name));
        lines.extend(linux.step_lines(k, &step));
    }
    lines
}

/// The first line where two transcripts differ, with some context.
fn first_difference(linux: &[String], guest: &[String]) -> String {
    let at = linux
        .iter()
        .zip(guest)
        .position(|(l, g)| l != g)
        .unwrap_or(linux.len().min(guest.len()));
    let from = at.saturating_sub(4);
    let mut s = String::new();
    for l in &linux[from..at] {
        s += &format!("      {l}\n");
    }
    s += &format!("    linux: {}\n", linux.get(at).map_or("(end)", |l| l));
    s += &format!("    guest: {}\n", guest.get(at).map_or("(end)", |l| l));
    s
}

fn check_mode(kernel_mode: &str, only: Option<&str>) -> bool {
    let cases: Vec<_> = script::cases(TABLE).collect();
    let index = only.map(|n| {
        cases.iter().position(|c| c.name == n).unwrap_or_else(|| {
            usage(&format!(
                "no case named {n:?} in resources/conformance/cases.txt"
            ))
        })
    });
    let guest = guest_transcripts(kernel_mode, index);
    let (mut agree, mut later, mut ok) = (0, 0, true);
    // An emulated ring 0 (kvm_pvm) skips the heavy cases.
    let heavy_skipped = kernel_mode == "ring0";
    let mut skipped = 0;
    for case in cases.iter().filter(|c| only.is_none_or(|n| n == c.name)) {
        if heavy_skipped && only.is_none() && case.heavy.is_some() {
            skipped += 1;
            continue;
        }
        let linux = linux_transcript(case);
        let Some(g) = guest.get(case.name) else {
            println!(
                "FAIL {} ({kernel_mode}): the guest printed no transcript",
                case.name
            );
            ok = false;
            continue;
        };
        match (linux == *g, case.later) {
            (true, None) => agree += 1,
            (false, Some(_)) => later += 1,
            (true, Some(_)) => {
                println!(
                    "FAIL {} ({kernel_mode}): agrees with Linux but is marked later",
                    case.name
                );
                ok = false;
            }
            (false, None) => {
                println!(
                    "FAIL {} ({kernel_mode}, {}):\n{}",
                    case.name,
                    case.source,
                    first_difference(&linux, g)
                );
                ok = false;
            }
        }
    }
    println!(
        "guest_conformance ({kernel_mode} mode): {agree} of {} cases agree with Linux {}, \
         {later} marked later, {skipped} heavy skipped",
        cases.len(),
        oracle::host_kernel()
    );
    ok
}

/// A one-line complaint about the arguments, exit 2.
fn usage(why: &str) -> ! {
    eprintln!("guest_conformance: {why} (arguments: --mode ring0|ring3, --case NAME)");
    std::process::exit(2)
}

fn main() {
    if std::env::args().any(|a| a == "--oracle") {
        oracle::serve_stdio();
    }
    if !common::kvm_available() {
        return;
    }
    // `--mode M` picks a kernel mode, `--case NAME` one case.
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    // The guest kernel in the mode it picks on this machine, and in the
    // other one (ring 0, as on hardware KVM and under QEMU).
    let modes: Vec<&str> = match value("--mode") {
        Some(m) if m == "ring0" || m == "ring3" => vec![m.as_str()],
        Some(m) => usage(&format!("--mode is ring0 or ring3, not {m:?}")),
        None => vec!["ring3", "ring0"],
    };
    let only = value("--case").map(String::as_str);
    let results: Vec<bool> = modes.iter().map(|m| check_mode(m, only)).collect();
    if results.contains(&false) {
        std::process::exit(1);
    }
}
