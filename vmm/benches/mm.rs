//! MM benchmark: the same memory-management operations in the writewatch
//! guest (ring-3 processes over the guest MM core) and in a plain Linux
//! process on the host, in one run, reported as per-operation times and the
//! guest/host ratio. Absolute times move on a shared machine; the ratio of
//! two measurements taken minutes apart on the same machine moves less.
//!
//! `cargo bench -p writewatch --bench mm` (add `-- --rounds 9` for more host
//! rounds, `--guest-rounds 3` for more guest boots). One guest round runs
//! every operation at the host's sizes and takes ~20 s on kvm_pvm (where
//! the guest kernel does this work in its ring-3 context); the default is
//! one guest round and five host rounds.
//!
//! Operations (64 MiB = 16384 pages of 4 KiB unless noted):
//! - `anon_write_fault`: first write to each page of a fresh private anonymous mapping.
//! - `zero_page_read_fault`: first read of each page (maps the shared zero page).
//! - `cow_fault`: write to each page of a touched mapping after fork, while the child still maps it.
//! - `fork_64m`: fork of a process with 64 MiB touched (one operation).
//! - `munmap_64m`: munmap of 64 MiB touched (one operation).
//! - `getpid`: a `getpid` round trip from user mode (the cost of a system
//!   call and its return, one per operation).
//! - `hugetlb_pool_grow` / `hugetlb_pool_shrink`: `nr_hugepages` from 0 to
//!   32 and back (per 2 MiB page; the host needs root, else `missing`).
//! - `hugetlb_pool_grow_hvo` / `hugetlb_pool_shrink_hvo`: the same with
//!   HVO (`vm.hugetlb_optimize_vmemmap`: the pooled pages' tail metadata
//!   given back, and restored before they leave).
//! - `hugetlb_write_fault`: first write to each 2 MiB page of a fresh
//!   private `MAP_HUGETLB` mapping (per huge page: compare with 512
//!   `anon_write_fault`s).
//!
//! A third column runs the same operations through the guest MM core on the
//! host, on its simulated machine (`guest_mm::testing`: RAM in a `Vec`, a
//! software page walker and TLB standing in for the MMU), so the cost of the
//! MM core's own algorithms shows apart from any platform. Its page walker
//! is slower than hardware, so this column is an upper bound for the MM core.

mod support;

use support::median;

use std::time::Instant;

const PAGE: usize = 4096;
const PAGES: usize = 16384;

/// One measured operation: how many operations, and how long all took.
#[derive(Clone, Copy)]
struct Sample {
    ops: u64,
    ns: f64,
}

impl Sample {
    fn ns_per_op(self) -> f64 {
        self.ns / self.ops as f64
    }
}

const NAMES: [&str; 11] = [
    "anon_write_fault",
    "zero_page_read_fault",
    "cow_fault",
    "fork_64m",
    "munmap_64m",
    "getpid",
    "hugetlb_pool_grow",
    "hugetlb_write_fault",
    "hugetlb_pool_shrink",
    "hugetlb_pool_grow_hvo",
    "hugetlb_pool_shrink_hvo",
];

/// 2 MiB pages of the hugetlb operations (64 MiB, as the others).
const HUGE_PAGES: usize = 32;
const HUGE: usize = 2 << 20;
const NR_HUGEPAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
/// Its reserved pages (`HugePages_Rsvd`).
const RESV_HUGEPAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/resv_hugepages";

const OPTIMIZE_VMEMMAP: &str = "/proc/sys/vm/hugetlb_optimize_vmemmap";

/// Sets `vm.hugetlb_optimize_vmemmap` (HVO) on the host; whether it took.
fn host_hvo(on: bool) -> bool {
    std::fs::write(OPTIMIZE_VMEMMAP, if on { "1" } else { "0" }).is_ok()
}

/// Sets the host's 2 MiB pool (root only); whether it now has `n` pages.
/// Sets the host's 2 MiB pool to `n` usable pages; whether it took. The
/// reservations a host had leaked before the bench started (Linux 6.18
/// leaks them on some hugetlb mremaps, docs/CONFORMANCE.md) pin pages
/// nobody can use, so the pool is sized that much bigger, as the Linux
/// oracle of the conformance tests does.
fn host_pool(n: usize) -> bool {
    static LEAKED: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let leaked = *LEAKED.get_or_init(|| {
        std::fs::read_to_string(RESV_HUGEPAGES)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    });
    let want = n + leaked;
    std::fs::write(NR_HUGEPAGES, want.to_string()).is_ok()
        && std::fs::read_to_string(NR_HUGEPAGES)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            == Some(want)
}

fn main() {
    let option = |name: &str, default: usize| {
        std::env::args()
            .skip_while(|a| a != name)
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (rounds, guest_rounds) = (option("--rounds", 5), option("--guest-rounds", 1));
    let guest = guest_samples(guest_rounds);
    println!(
        "mm: median ns per operation; guest {guest_rounds} boot(s), host {rounds} rounds; \
         fork/munmap over 64 MiB touched, faults over the page count each side reports"
    );
    println!(
        "  {:<22} {:>10} {:>14} {:>10} {:>14} {:>12} {:>12} {:>10}",
        "operation",
        "guest ops",
        "guest ns/op",
        "host ops",
        "host ns/op",
        "guest/host",
        "sim ns/op",
        "sim/host"
    );
    for name in NAMES {
        let host_runs: Vec<Sample> = (0..rounds).map(|_| host_sample(name)).collect();
        let host_ops = host_runs[0].ops;
        let host = median(&mut host_runs.iter().map(|s| s.ns_per_op()).collect::<Vec<_>>());
        let sim_runs: Vec<f64> = (0..rounds).map(|_| sim_sample(name).ns_per_op()).collect();
        let sim = median(&mut sim_runs.clone());
        let sim_cols = format!("{sim:>12.0} {:>10.2}", sim / host);
        let guest_runs: Vec<Sample> = guest
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, s)| *s)
            .collect();
        match guest_runs.first() {
            None => println!(
                "  {name:<22} {:>10} {:>14} {host_ops:>10} {host:>14.0} {:>12} {sim_cols}",
                "-", "missing", "-"
            ),
            Some(first) => {
                let ns = median(&mut guest_runs.iter().map(|s| s.ns_per_op()).collect::<Vec<_>>());
                println!(
                    "  {name:<22} {:>10} {ns:>14.0} {host_ops:>10} {host:>14.0} {:>12.1} {sim_cols}",
                    first.ops,
                    ns / host
                );
            }
        }
    }
}

/// Boots the guest in benchmark mode `rounds` times and collects its
/// `bench` records, converting guest TSC cycles with the reported TSC rate.
fn guest_samples(rounds: usize) -> Vec<(String, Sample)> {
    let run = [
        "--mem",
        "512M",
        "--timeout",
        "300",
        "--cmdline",
        "mode=bench",
    ];
    (0..rounds)
        .flat_map(|_| support::guest_bench_records(&run))
        .map(|r| {
            (
                r.name,
                Sample {
                    ops: r.ops,
                    ns: r.ns,
                },
            )
        })
        .collect()
}

fn host_sample(name: &str) -> Sample {
    match name {
        "anon_write_fault" => {
            let region = Region::map(PAGES);
            let start = Instant::now();
            region.touch_write();
            Sample {
                ops: PAGES as u64,
                ns: elapsed_ns(start),
            }
        }
        "zero_page_read_fault" => {
            let region = Region::map(PAGES);
            let start = Instant::now();
            region.touch_read();
            Sample {
                ops: PAGES as u64,
                ns: elapsed_ns(start),
            }
        }
        "cow_fault" => {
            let region = Region::map(PAGES);
            region.touch_write();
            let child = ForkedChild::spawn_waiting();
            let start = Instant::now();
            region.touch_write();
            let ns = elapsed_ns(start);
            child.release();
            Sample {
                ops: PAGES as u64,
                ns,
            }
        }
        "fork_64m" => {
            let region = Region::map(PAGES);
            region.touch_write();
            let start = Instant::now();
            let child = ForkedChild::spawn_exiting();
            let ns = elapsed_ns(start);
            child.reap();
            Sample { ops: 1, ns }
        }
        "munmap_64m" => {
            let region = Region::map(PAGES);
            region.touch_write();
            let start = Instant::now();
            drop(region);
            Sample {
                ops: 1,
                ns: elapsed_ns(start),
            }
        }
        "getpid" => {
            let start = Instant::now();
            for _ in 0..PAGES {
                // SAFETY: getpid takes no arguments and cannot fail.
                std::hint::black_box(unsafe { libc::syscall(libc::SYS_getpid) });
            }
            Sample {
                ops: PAGES as u64,
                ns: elapsed_ns(start),
            }
        }
        "hugetlb_pool_grow_hvo" | "hugetlb_pool_shrink_hvo" => {
            let plain = name.trim_end_matches("_hvo");
            let on = host_hvo(true);
            let sample = host_sample(plain);
            host_hvo(false);
            if on {
                sample
            } else {
                Sample { ops: 0, ns: 0.0 }
            }
        }
        "hugetlb_pool_grow" => {
            host_pool(0);
            let start = Instant::now();
            let ok = host_pool(HUGE_PAGES);
            let ns = elapsed_ns(start);
            host_pool(0);
            Sample {
                ops: if ok { HUGE_PAGES as u64 } else { 0 },
                ns,
            }
        }
        "hugetlb_pool_shrink" => {
            let ok = host_pool(HUGE_PAGES);
            let start = Instant::now();
            let ok = ok && host_pool(0);
            Sample {
                ops: if ok { HUGE_PAGES as u64 } else { 0 },
                ns: elapsed_ns(start),
            }
        }
        "hugetlb_write_fault" => {
            if !host_pool(HUGE_PAGES) {
                return Sample { ops: 0, ns: 0.0 };
            }
            let len = HUGE_PAGES * HUGE;
            // SAFETY: a fresh hugetlb mapping aliases nothing; checked below.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
                    -1,
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                // A pool whose reservations leaked (HugePages_Rsvd above
                // what is mapped) cannot reserve them all: no figure, and
                // the reason, rather than a panic.
                eprintln!(
                    "mm: hugetlb_write_fault: no figure: mmap of {HUGE_PAGES} huge pages failed ({}); see HugePages_Rsvd in /proc/meminfo",
                    std::io::Error::last_os_error()
                );
                host_pool(0);
                return Sample { ops: 0, ns: 0.0 };
            }
            let start = Instant::now();
            for i in 0..HUGE_PAGES {
                // SAFETY: inside the mapping just made.
                unsafe { base.cast::<u8>().add(i * HUGE).write_volatile(1) };
            }
            let ns = elapsed_ns(start);
            // SAFETY: unmaps exactly the mapping made above.
            unsafe { libc::munmap(base, len) };
            host_pool(0);
            Sample {
                ops: HUGE_PAGES as u64,
                ns,
            }
        }
        other => unreachable!("unknown operation {other}"),
    }
}

/// The operation through the guest MM core on its simulated machine: one
/// process, 64 MiB, the same access pattern as the host's (one 8-byte
/// access per page).
fn sim_sample(name: &str) -> Sample {
    use guest_mm::mmap::{MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE};
    use guest_mm::testing::user::{sim_system, user_read, user_write};
    let mut sys = sim_system(256, 1, guest_mm::Config::default());
    let pid = sys.spawn(0).expect("spawn");
    let len = (PAGES * PAGE) as u64;
    let base = sys
        .mmap(
            pid,
            0,
            len,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS,
            0,
        )
        .expect("mmap");
    let pages = |sys: &mut guest_mm::MemSystem<_>, write: bool| {
        for i in 0..PAGES as u64 {
            let va = base + i * PAGE as u64;
            if write {
                user_write(sys, pid, 0, va, &i.to_le_bytes()).expect("write");
            } else {
                user_read(sys, pid, 0, va, &mut [0u8; 8]).expect("read");
            }
        }
    };
    let timed = |sys: &mut guest_mm::MemSystem<_>,
                 ops: u64,
                 op: &mut dyn FnMut(&mut guest_mm::MemSystem<_>)| {
        let start = Instant::now();
        op(sys);
        Sample {
            ops,
            ns: elapsed_ns(start),
        }
    };
    match name {
        "anon_write_fault" => timed(&mut sys, PAGES as u64, &mut |s| pages(s, true)),
        "zero_page_read_fault" => timed(&mut sys, PAGES as u64, &mut |s| pages(s, false)),
        "cow_fault" => {
            pages(&mut sys, true);
            let _child = sys.fork(pid).expect("fork");
            timed(&mut sys, PAGES as u64, &mut |s| pages(s, true))
        }
        "fork_64m" => {
            pages(&mut sys, true);
            timed(&mut sys, 1, &mut |s| {
                s.fork(pid).expect("fork");
            })
        }
        "munmap_64m" => {
            pages(&mut sys, true);
            timed(&mut sys, 1, &mut |s| {
                s.munmap(pid, base, len).expect("munmap")
            })
        }
        "getpid" => timed(&mut sys, PAGES as u64, &mut |s| {
            for _ in 0..PAGES {
                let r = s.syscall(pid, guest_mm::syscall::SYS_GETPID, [0; 6], &mut |_| {});
                std::hint::black_box(r);
            }
        }),
        "hugetlb_pool_grow"
        | "hugetlb_pool_shrink"
        | "hugetlb_write_fault"
        | "hugetlb_pool_grow_hvo"
        | "hugetlb_pool_shrink_hvo" => {
            use guest_mm::PoolKnob::{NrHugepages, OptimizeVmemmap};
            let h = guest_mm::hugetlb::HSTATE_2M;
            let n = HUGE_PAGES as u64;
            let hvo = u64::from(name.ends_with("_hvo"));
            sys.hugetlb_set_pool(h, OptimizeVmemmap, hvo).expect("hvo");
            let name = name.trim_end_matches("_hvo");
            if name == "hugetlb_pool_grow" {
                return timed(&mut sys, n, &mut |s| {
                    s.hugetlb_set_pool(h, NrHugepages, n).expect("pool")
                });
            }
            sys.hugetlb_set_pool(h, NrHugepages, n).expect("pool");
            if name == "hugetlb_pool_shrink" {
                return timed(&mut sys, n, &mut |s| {
                    s.hugetlb_set_pool(h, NrHugepages, 0).expect("pool")
                });
            }
            let flags = MAP_PRIVATE | MAP_ANONYMOUS | guest_mm::mmap::MAP_HUGETLB;
            let hbase = sys
                .mmap(pid, 0, n * HUGE as u64, PROT_READ | PROT_WRITE, flags, 0)
                .expect("hugetlb mmap");
            timed(&mut sys, n, &mut |s| {
                for i in 0..n {
                    user_write(s, pid, 0, hbase + i * HUGE as u64, &[1]).expect("write");
                }
            })
        }
        other => unreachable!("unknown operation {other}"),
    }
}

fn elapsed_ns(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e9
}

/// A private anonymous mapping, unmapped on drop.
struct Region {
    base: *mut u8,
    pages: usize,
}

impl Region {
    fn map(pages: usize) -> Self {
        // SAFETY: a fresh anonymous mapping at an address of the kernel's
        // choosing aliases nothing; failure is checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pages * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap failed");
        Region {
            base: base.cast(),
            pages,
        }
    }

    fn touch_write(&self) {
        for page in 0..self.pages {
            // SAFETY: the byte lies inside this live read-write mapping.
            unsafe { self.base.add(page * PAGE).write_volatile(page as u8) };
        }
    }

    fn touch_read(&self) {
        let mut sum = 0u8;
        for page in 0..self.pages {
            // SAFETY: the byte lies inside this live readable mapping.
            sum = sum.wrapping_add(unsafe { self.base.add(page * PAGE).read_volatile() });
        }
        std::hint::black_box(sum);
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `map`, which nothing
        // references any more.
        unsafe { libc::munmap(self.base.cast(), self.pages * PAGE) };
    }
}

/// A forked child that either exits at once or waits on a pipe.
struct ForkedChild {
    pid: libc::pid_t,
    release_fd: Option<libc::c_int>,
}

impl ForkedChild {
    fn spawn_exiting() -> Self {
        // SAFETY: the benchmark is single-threaded here; the child calls only
        // the async-signal-safe _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        ForkedChild {
            pid,
            release_fd: None,
        }
    }

    fn spawn_waiting() -> Self {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid two-element array for pipe to fill.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe failed");
        // SAFETY: single-threaded; the child calls only read and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let mut byte = 0u8;
            // SAFETY: closes the child's copy of the write end (so the
            // parent's close is seen as end of file), reads one byte into a
            // live local, then ends the child.
            unsafe {
                libc::close(fds[1]);
                libc::read(fds[0], (&mut byte as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        // SAFETY: the parent no longer needs the read end it owns.
        unsafe { libc::close(fds[0]) };
        ForkedChild {
            pid,
            release_fd: Some(fds[1]),
        }
    }

    fn release(self) {
        if let Some(fd) = self.release_fd {
            // SAFETY: `fd` is our open write end; closing it wakes the child.
            unsafe { libc::close(fd) };
        }
        self.reap();
    }

    fn reap(self) {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
    }
}
