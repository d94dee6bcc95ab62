//! Scenarios on the host: each one as Linux processes of this machine's
//! kernel making the real calls (the conformance oracle,
//! docs/CONFORMANCE.md), which this binary serves when started again with
//! `--oracle`.

use super::{Outcome, Requirement, Run, Scenario};
use crate::backend::Runner;
use crate::oracle::{self, Oracle};
use crate::script;

/// The argument that makes this binary the oracle process.
pub const ORACLE_ARG: &str = "--oracle";

/// Serves the oracle's protocol on stdin and stdout, for the process that
/// started this one; never returns.
pub fn serve_oracle() -> ! {
    oracle::serve_stdio()
}

/// The host kernel's release, recorded with every comparison.
pub fn kernel_release() -> String {
    oracle::host_kernel()
}

/// Why the host cannot run a scenario that needs `r`, if it cannot.
fn missing(r: Requirement) -> Option<String> {
    match r {
        Requirement::SoftDirty if !soft_dirty_supported() => Some(
            "requires soft_dirty: this kernel has no CONFIG_MEM_SOFT_DIRTY (a new mapping's pagemap entry lacks bit 55)".into(),
        ),
        Requirement::SoftDirty => None,
        Requirement::SoftDirtyPrecise => Some(
            "requires soft_dirty_precise: writewatch's precise soft-dirty mode, which Linux does not have".into(),
        ),
        Requirement::Hugetlb => {
            let knob = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
            // SAFETY: geteuid has no preconditions.
            let root = unsafe { libc::geteuid() } == 0;
            if !std::path::Path::new(knob).exists() {
                Some("requires hugetlb: this kernel has no 2 MiB hugetlb pool".into())
            } else if !root {
                Some(format!(
                    "requires hugetlb: sizing the host's pool ({knob}) needs root"
                ))
            } else {
                None
            }
        }
    }
}

/// Whether this kernel tracks soft-dirty: a page written in a new mapping
/// has pagemap bit 55 where it does (`VM_SOFTDIRTY`, and the PTE's bit);
/// probed once per run.
fn soft_dirty_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(probe_soft_dirty)
}

/// Maps, writes and unmaps one page, reading its pagemap entry between.
fn probe_soft_dirty() -> bool {
    use std::os::unix::fs::FileExt;
    const PAGE: usize = 4096;
    // A fresh private anonymous page, unmapped below.
    // SAFETY: mmap with no address hint aliases nothing.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return false;
    }
    // SAFETY: inside the page just mapped.
    unsafe { page.cast::<u8>().write_volatile(1) };
    let mut entry = [0u8; 8];
    let read = std::fs::File::open("/proc/self/pagemap")
        .and_then(|f| f.read_exact_at(&mut entry, page as u64 / PAGE as u64 * 8));
    // SAFETY: unmaps exactly the page mapped above.
    unsafe { libc::munmap(page, PAGE) };
    read.is_ok() && u64::from_le_bytes(entry) & (1 << 55) != 0
}

/// The transcript Linux gives for the scenario whose text is `text`.
pub fn transcript(text: &str) -> Vec<String> {
    let Some(case) = script::cases(text).next() else {
        return Vec::new();
    };
    let mut linux = Runner::new(Oracle::start());
    let mut lines = Vec::new();
    for (k, step) in case.steps().enumerate() {
        match step {
            Ok(step) => lines.extend(linux.step_lines(k, &step)),
            Err(why) => lines.push(format!("{k}: cannot parse: {why}")),
        }
    }
    lines
}

/// Runs `scenarios` one after another, each in Linux processes of its own.
pub fn run(scenarios: &[Scenario]) -> Run {
    let outcomes = scenarios
        .iter()
        .map(|s| match s.requires.iter().find_map(|&r| missing(r)) {
            Some(why) => Outcome::NotRun(why),
            None => Outcome::Ran(transcript(&s.text)),
        })
        .collect();
    Run {
        side: format!("Linux {}", kernel_release()),
        outcomes,
    }
}
