//! Differential test of guest-mm against the host's Linux: the same steps
//! (mmap, munmap, mprotect, madvise, mremap, mlock, fork, exit and ring-3
//! reads and writes) run in the MM core on a simulated machine and in
//! real Linux processes, and every step's result, the VMA layout and the
//! resident pages' contents must agree (docs/CONFORMANCE.md).
//!
//! `cargo test -p guest-mm --test linux_diff` runs the hand-written edge
//! cases and a seeded batch of random sequences. Arguments (after `--`):
//! `--show NAME` prints both transcripts of one case; `--cases` only the
//! cases; `--random N` runs N random sequences; `--seed S` picks the seed
//! (printed on every run, so a failure can be replayed).

mod backend;
mod cases;
mod oracle;
#[path = "../../../user/src/probe.rs"]
mod probe;
mod random;
#[path = "../../../user/src/script.rs"]
#[allow(dead_code)]
mod script;
mod sim;
#[path = "../../../user/src/writewatch.rs"]
mod writewatch;

use backend::Runner;
use script::Step;

/// Where two transcripts first differ.
pub struct Divergence {
    pub step: usize,
    pub common: Vec<String>,
    pub linux: Vec<String>,
    pub guest: Vec<String>,
}

impl Divergence {
    pub fn render(&self) -> String {
        let mut s = String::new();
        for l in self.common.iter().rev().take(12).rev() {
            s += &format!("    {l}\n");
        }
        s += &format!("  step {} differs:\n", self.step);
        for l in &self.linux {
            s += &format!("    linux: {l}\n");
        }
        for l in &self.guest {
            s += &format!("    guest: {l}\n");
        }
        s
    }
}

/// The host's `vm.mmap_min_addr`, which the guest side is configured with.
pub fn host_mmap_min_addr() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/mmap_min_addr")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65536)
}

/// Runs `steps` on guest-mm and on Linux side by side.
pub fn compare(steps: &[Step]) -> Result<Vec<String>, Divergence> {
    let mut linux = Runner::new(oracle::Oracle::start());
    let mut guest = Runner::new(sim::Sim::new(host_mmap_min_addr()));
    let mut common = Vec::new();
    for (k, step) in steps.iter().enumerate() {
        let l = linux.step_lines(k, step);
        let g = guest.step_lines(k, step);
        if l != g {
            return Err(Divergence {
                step: k,
                common,
                linux: l,
                guest: g,
            });
        }
        if let Err(e) = guest.backend.sys.check() {
            return Err(Divergence {
                step: k,
                common,
                linux: l,
                guest: vec![format!("invariant violation: {:?}", e.violations)],
            });
        }
        common.extend(l);
    }
    Ok(common)
}

/// A one-line complaint about the arguments, exit 2.
fn usage(why: &str) -> ! {
    eprintln!("linux_diff: {why} (arguments: --cases, --random N, --seed S, --show NAME)");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--oracle") {
        oracle::serve_stdio();
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let number = |flag: &str| {
        value(flag).map(|v| {
            v.parse::<u64>()
                .unwrap_or_else(|_| usage(&format!("{flag} wants a number, not {v:?}")))
        })
    };
    if let Some(name) = value("--show") {
        let Some(case) = cases::all().into_iter().find(|c| c.name == name) else {
            usage(&format!(
                "no case named {name:?} in resources/conformance/cases.txt"
            ));
        };
        match compare(&cases::steps(&case)) {
            Ok(t) => println!("{}: agrees\n{}", case.name, t.join("\n")),
            Err(d) => println!("{}: differs\n{}", case.name, d.render()),
        }
        return;
    }
    let random = number("--random");
    let seed = number("--seed");
    let only_cases = args.iter().any(|a| a == "--cases");
    let mut failed = false;
    if random.is_none() || only_cases {
        failed |= !cases::run_all();
    }
    if !only_cases {
        let n = random.map_or(random::DEFAULT_SEQUENCES, |n| {
            n.min(u64::from(u32::MAX)) as u32
        });
        failed |= !random::run(n, seed);
    }
    if failed {
        std::process::exit(1);
    }
}
