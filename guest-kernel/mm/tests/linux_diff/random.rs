//! Random operation sequences, run on guest-mm and on Linux side by side
//! (proptest: seeded, and shrunk to a shortest differing sequence).
//!
//! Everything happens in the first 64 pages of the window, so mappings
//! meet, split, merge and overlap often; hugetlb steps (pool sizing,
//! MAP_HUGETLB mappings and the calls on them, with `LINUX_DIFF_HUGETLB=1`
//! only, see [`with_hugetlb`]) use 8 huge pages further in. Processes are picked among the
//! live ones when a step runs; `exit` takes a live child without children
//! of its own (or does nothing).

use std::cell::Cell;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use crate::backend::Runner;
use crate::script::{Addr, FdArg, Op, PAGE, ScanArgs, Step, UffdReq, WINDOW};
use crate::{host_mmap_min_addr, oracle, sim};

/// Sequences one plain `cargo test` runs.
pub const DEFAULT_SEQUENCES: u32 = 96;
const PAGES: u64 = 64;
const MAX_PROCS: usize = 3;

/// One step before its process is chosen.
#[derive(Debug, Clone)]
struct Abstract {
    proc: u8,
    op: Op,
}

fn page(max: u64) -> impl Strategy<Value = u64> {
    0..max
}

fn at(p: u64) -> Addr {
    Addr::Abs(WINDOW + p * PAGE)
}

fn prot() -> impl Strategy<Value = u64> {
    prop_oneof![4 => Just(3u64), 2 => Just(1u64), 1 => Just(0u64), 1 => Just(7u64)]
}

fn mmap_flags() -> impl Strategy<Value = u64> {
    let ty = prop_oneof![5 => Just(0x02u64), 2 => Just(0x01u64), 1 => Just(0x08u64)];
    let place = prop_oneof![6 => Just(0x10u64), 2 => Just(0x10_0000u64), 1 => Just(0u64)];
    let extra = prop_oneof![
        8 => Just(0u64),
        1 => Just(0x8000u64),
        1 => Just(0x2000u64),
        1 => Just(0x4000u64),
        1 => Just(0x2_0000u64),
        1 => Just(0x100u64),
    ];
    (ty, place, extra).prop_map(|(t, p, e)| t | p | e | 0x20)
}

fn advice() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(4u64),
        2 => Just(8u64),
        2 => Just(21u64),
        1 => Just(9u64),
        1 => Just(10u64),
        1 => Just(11u64),
        1 => Just(18u64),
        1 => Just(19u64),
        1 => Just(1u64),
        1 => Just(0u64),
        1 => Just(22u64),
        1 => Just(23u64),
        1 => Just(24u64),
        1 => Just(14u64),
        2 => Just(102u64),
        1 => Just(103u64),
    ]
}

fn mremap_flags() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64),
        2 => Just(1u64),
        3 => Just(3u64),
        2 => Just(7u64),
        1 => Just(5u64),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let len = 1u64..6;
    prop_oneof![
        6 => (page(PAGES), len.clone(), prot(), mmap_flags()).prop_map(|(p, n, prot, flags)| {
            Op::Mmap { addr: at(p), len: n * PAGE, prot, flags, fd: FdArg::Num(-1), off: 0 }
        }),
        3 => (page(PAGES), len.clone()).prop_map(|(p, n)| Op::Munmap { addr: at(p), len: n * PAGE }),
        4 => (page(PAGES), len.clone(), prot()).prop_map(|(p, n, prot)| Op::Mprotect {
            addr: at(p),
            len: n * PAGE,
            prot,
        }),
        4 => (page(PAGES), len.clone(), advice()).prop_map(|(p, n, advice)| Op::Madvise {
            addr: at(p),
            len: n * PAGE,
            advice,
        }),
        4 => (page(PAGES), len.clone(), len.clone(), mremap_flags(), page(PAGES)).prop_map(
            |(p, o, n, flags, d)| Op::Mremap {
                old: at(p),
                old_len: o * PAGE,
                new_len: if flags & 4 != 0 { o * PAGE } else { n * PAGE },
                flags,
                new_addr: at(d),
            }
        ),
        1 => (page(PAGES), len.clone()).prop_map(|(p, n)| Op::Mlock { addr: at(p), len: n * PAGE }),
        1 => (page(PAGES), len).prop_map(|(p, n)| Op::Munlock { addr: at(p), len: n * PAGE }),
        10 => (page(PAGES), 0u64..4, 1u8..=255).prop_map(|(p, o, val)| Op::Write {
            addr: Addr::Abs(WINDOW + p * PAGE + o * 1024),
            val,
        }),
        4 => page(PAGES).prop_map(|p| Op::Read { addr: at(p) }),
        1 => Just(Op::Fork),
        1 => Just(Op::Exit),
        4 => uffd_op(),
    ]
}

/// The userfaultfd every sequence opens first (steps 0 and 1, see
/// [`check`]): asynchronous write-protection, so no fault ever waits for a
/// handler.
const UFFD: FdArg = FdArg::Step(0);

fn categories() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        3 => Just(2u64),
        1 => Just(1u64),
        1 => Just(8u64),
        1 => Just(0x10u64),
        1 => Just(0x20u64),
        1 => Just(0x1ffu64),
        1 => 0u64..0x200,
    ]
}

/// Write-tracking steps: register, unregister and (un)protect ranges,
/// read the pagemap, and `PAGEMAP_SCAN` with random masks, flags, page
/// limits and short vectors.
fn uffd_op() -> impl Strategy<Value = Op> {
    let len = 1u64..9;
    prop_oneof![
        3 => (page(PAGES), len.clone()).prop_map(|(p, n)| Op::Uffd {
            fd: UFFD,
            req: UffdReq::Register { addr: at(p), len: n * PAGE, mode: 2 },
        }),
        1 => (page(PAGES), len.clone()).prop_map(|(p, n)| Op::Uffd {
            fd: UFFD,
            req: UffdReq::Unregister { addr: at(p), len: n * PAGE },
        }),
        3 => (page(PAGES), len.clone(), 0u64..2).prop_map(|(p, n, mode)| Op::Uffd {
            fd: UFFD,
            req: UffdReq::Writeprotect { addr: at(p), len: n * PAGE, mode },
        }),
        2 => (page(PAGES), len.clone()).prop_map(|(p, n)| Op::Pagemap { addr: at(p), pages: n }),
        4 => (
            page(PAGES),
            1u64..17,
            0u64..4,
            (categories(), categories(), categories(), categories()),
            prop_oneof![3 => Just(0u64), 1 => 1u64..4],
            prop_oneof![3 => Just(8u64), 1 => 0u64..3],
        )
            .prop_map(|(p, n, flags, (mask, inverted, anyof, ret), max_pages, vec_len)| {
                Op::PagemapScan {
                    addr: at(p),
                    len: n * PAGE,
                    scan: ScanArgs { flags, mask, inverted, anyof, ret, max_pages, vec_len },
                }
            }),
    ]
}

/// 2 MiB pages of the hugetlb area, which starts 64 MiB into the window
/// so that the 4 KiB steps never reach it.
const HUGE_PAGES: u64 = 8;
const HUGE: u64 = 512 * PAGE;
const HUGE_AREA: u64 = WINDOW + (64 << 20);

/// An address in the hugetlb area: mostly huge page aligned, sometimes a
/// page off, to hit Linux's alignment errors.
fn huge_at() -> impl Strategy<Value = Addr> {
    (
        0..HUGE_PAGES,
        prop_oneof![6 => Just(0u64), 1 => Just(1u64), 1 => Just(511u64)],
    )
        .prop_map(|(h, p)| Addr::Abs(HUGE_AREA + h * HUGE + p * PAGE))
}

/// hugetlb steps: pool sizing, MAP_HUGETLB mappings, the calls on them at
/// huge page granularity, and accesses.
fn huge_op() -> impl Strategy<Value = Op> {
    let len =
        prop_oneof![4 => (1u64..3).prop_map(|n| n * HUGE), 1 => Just(PAGE), 1 => Just(HUGE + PAGE)];
    let ty = prop_oneof![2 => Just(0x02u64), 1 => Just(0x01u64)];
    let extra = prop_oneof![5 => Just(0u64), 1 => Just(0x4000u64), 1 => Just(0x8000u64)];
    prop_oneof![
        2 => (0u64..5).prop_map(|value| Op::HugePool { knob: 0, value }),
        1 => (0u64..3).prop_map(|value| Op::HugePool { knob: 1, value }),
        4 => (huge_at(), len.clone(), prot(), ty, extra).prop_map(|(addr, len, prot, t, e)| {
            Op::Mmap { addr, len, prot, flags: t | e | 0x20 | 0x10 | 0x4_0000, fd: FdArg::Num(-1), off: 0 }
        }),
        2 => (huge_at(), len.clone()).prop_map(|(addr, len)| Op::Munmap { addr, len }),
        1 => (huge_at(), len.clone(), prot()).prop_map(|(addr, len, prot)| Op::Mprotect { addr, len, prot }),
        2 => (huge_at(), len.clone(), prop_oneof![3 => Just(4u64), 1 => Just(9u64), 1 => Just(10u64)])
            .prop_map(|(addr, len, advice)| Op::Madvise { addr, len, advice }),
        1 => (huge_at(), len.clone(), len, huge_at()).prop_map(|(old, old_len, new_len, new_addr)| {
            Op::Mremap { old, old_len, new_len, flags: 3, new_addr }
        }),
        5 => (0..HUGE_PAGES, 0u64..512, 1u8..=255).prop_map(|(h, p, val)| Op::Write {
            addr: Addr::Abs(HUGE_AREA + h * HUGE + p * PAGE),
            val,
        }),
        2 => (0..HUGE_PAGES, 0u64..512).prop_map(|(h, p)| Op::Read {
            addr: Addr::Abs(HUGE_AREA + h * HUGE + p * PAGE),
        }),
        2 => Just(Op::HugeCounters),
    ]
}

/// Whether sequences include hugetlb steps: only when
/// `LINUX_DIFF_HUGETLB=1` is set. Linux 6.18 leaks a private hugetlb
/// mapping's reservations when part of it moves with mremap (the rest's
/// reservations are never returned), and a leaked reservation pins a huge
/// page of the host's pool until reboot, after which no hugetlb case can
/// compare; random sequences find such moves, so plain runs leave them out.
fn with_hugetlb() -> bool {
    std::env::var("LINUX_DIFF_HUGETLB").as_deref() == Ok("1")
}

fn sequence() -> impl Strategy<Value = Vec<Abstract>> {
    let weight = u32::from(with_hugetlb());
    let any_op = prop_oneof![4 => op(), weight => huge_op()];
    prop::collection::vec(
        (any::<u8>(), any_op).prop_map(|(proc, op)| Abstract { proc, op }),
        1..40,
    )
}

/// The process tree as the steps build it.
struct Tree {
    parent: Vec<usize>,
    alive: Vec<bool>,
}

impl Tree {
    fn live(&self) -> Vec<usize> {
        (0..self.alive.len()).filter(|&p| self.alive[p]).collect()
    }
    fn has_children(&self, p: usize) -> bool {
        (1..self.alive.len()).any(|c| self.alive[c] && self.parent[c] == p)
    }
    /// The concrete step for `a`, or `None` to skip it.
    fn place(&mut self, a: &Abstract) -> Option<Step> {
        let live = self.live();
        let pick = live[a.proc as usize % live.len()];
        match a.op {
            Op::Fork if live.len() >= MAX_PROCS => None,
            Op::Fork => {
                self.parent.push(pick);
                self.alive.push(true);
                Some(Step {
                    proc: pick,
                    op: Op::Fork,
                })
            }
            Op::Exit => {
                let leaves: Vec<usize> = live
                    .iter()
                    .copied()
                    .filter(|&p| p != 0 && !self.has_children(p))
                    .collect();
                let p = *leaves.get(a.proc as usize % leaves.len().max(1))?;
                self.alive[p] = false;
                Some(Step {
                    proc: p,
                    op: Op::Exit,
                })
            }
            op => Some(Step { proc: pick, op }),
        }
    }
}

/// Runs one sequence on both sides; the first differing step fails it.
fn check(seq: &[Abstract], steps_run: &Cell<u64>) -> Result<(), TestCaseError> {
    let mut linux = Runner::new(oracle::Oracle::start());
    let mut guest = Runner::new(sim::Sim::new(host_mmap_min_addr()));
    let mut tree = Tree {
        parent: vec![0],
        alive: vec![true],
    };
    let mut log = Vec::new();
    // Steps 0 and 1, outside the shrunk sequence: the userfaultfd the
    // tracking steps use.
    let setup = [
        Abstract {
            proc: 0,
            op: Op::Userfaultfd { flags: 1 },
        },
        Abstract {
            proc: 0,
            op: Op::Uffd {
                fd: UFFD,
                req: UffdReq::Api { features: 1 << 15 },
            },
        },
    ];
    for (k, a) in setup.iter().chain(seq).enumerate() {
        let Some(step) = tree.place(a) else {
            continue;
        };
        steps_run.set(steps_run.get() + 1);
        let l = linux.step_lines(k, &step);
        let g = guest.step_lines(k, &step);
        if l != g {
            let d = crate::Divergence {
                step: k,
                common: log,
                linux: l,
                guest: g,
            };
            return Err(TestCaseError::fail(d.render()));
        }
        if let Err(e) = guest.backend.sys.check() {
            return Err(TestCaseError::fail(format!(
                "step {k} {step}: invariants {:?}",
                e.violations
            )));
        }
        log.extend(l);
    }
    Ok(())
}

/// Runs `n` random sequences from `seed` (or a fresh one). False on a
/// divergence, after printing the shrunk sequence.
pub fn run(n: u32, seed: Option<u64>) -> bool {
    if n == 0 {
        return true;
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let config = Config {
        cases: n,
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, rng);
    let started = Instant::now();
    let steps = Cell::new(0u64);
    let result = runner.run(&sequence(), |seq| check(&seq, &steps));
    let steps = steps.get();
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            println!(
                "linux_diff random: {n} sequences, {steps} steps agree with Linux {} in {secs:.1} s \
                 ({:.0} sequences per minute), seed {seed}",
                oracle::host_kernel(),
                f64::from(n) * 60.0 / secs.max(1e-9),
            );
            true
        }
        Err(TestError::Fail(why, seq)) => {
            println!("FAIL random sequence (seed {seed}), shrunk to:");
            for a in &seq {
                println!("    p{} {:?}", a.proc, a.op);
            }
            println!("{why}");
            false
        }
        Err(TestError::Abort(why)) => {
            println!("FAIL random sequences aborted (seed {seed}): {why}");
            false
        }
    }
}
