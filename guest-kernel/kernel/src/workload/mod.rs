//! `mode=workload`: guest write workloads for the host's write watch
//! (docs/GUEST_ABI.md, "Workloads"). Every online CPU writes into an arena of
//! guest RAM that nothing else uses. Each write stores the current interval
//! number, which the VMM keeps in the control page, in the first eight bytes
//! of the page, so the VMM can tell from the page itself whether it was
//! written in an interval: the method of Linux's KVM `dirty_log_test`.
//!
//! The arena is written through the kernel's direct map (2 MiB and 1 GiB
//! pages) or, with `map=4k`, through 4 KiB mappings made for it. Nothing
//! faults, so even a 4 GiB arena is ready at once. The MM core is not built
//! in this mode: the arena is all the RAM it would have managed. On kvm_pvm
//! these ring-0 stores are emulated (about a microsecond per instruction,
//! each store marking its page dirty directly); on hardware KVM they run
//! natively and are tracked by write protection.

mod arena;
mod pattern;

use crate::arch::x86_64::paging::virt_to_phys;
use crate::arch::x86_64::{cpu, msr, smp};
use crate::boot::start_info::BootInfo;
use crate::exit::{ExitCode, exit};
use crate::memory::frames;
use crate::percpu::{self, MAX_CPUS};
use arena::Arena;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use pattern::{Pattern, Rng};
use spin::Once;

/// Boot-allocator memory kept for the kernel (page tables of a `map=4k`
/// arena: 4 KiB per 2 MiB mapped, so 4 MiB covers a 2 GiB arena).
const KERNEL_RESERVE: u64 = 4 << 20;
/// Writes between looks at the control page and the clock.
const BATCH: u64 = 64;

/// The page the VMM and the workload share (layout in docs/GUEST_ABI.md).
#[repr(C, align(4096))]
pub struct Control {
    /// The interval number written into pages; set by the VMM. With `wait`
    /// on the command line the workload starts once it is non-zero.
    interval: AtomicU64,
    /// Non-zero: stop writing, and exit 0 once every CPU has stopped.
    stop: AtomicU64,
    /// CPUs that have stopped.
    done: AtomicU64,
    _reserved: u64,
    /// Writes each CPU has made so far (updated every `BATCH` writes).
    writes: [AtomicU64; MAX_CPUS],
}

static CONTROL: Control = Control {
    interval: AtomicU64::new(0),
    stop: AtomicU64::new(0),
    done: AtomicU64::new(0),
    _reserved: 0,
    writes: [const { AtomicU64::new(0) }; MAX_CPUS],
};

/// What the command line asked for.
struct Workload {
    pattern: Pattern,
    arena: Arena,
    cpus: u64,
    /// TSC cycles per `BATCH` writes of one CPU, when a rate is set.
    cycles_per_batch: Option<u64>,
    seed: u64,
}

static WORKLOAD: Once<Workload> = Once::new();

/// A size with an optional K/M/G suffix.
fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Formats the arena's physical runs as a JSON array of `[start, len]`.
struct Runs<'a>(&'a Arena);

impl fmt::Display for Runs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, (start, len)) in self.0.runs().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "[{start},{len}]")?;
        }
        f.write_str("]")
    }
}

/// `mode=workload`: sets up the arena, announces it, and writes until the
/// VMM says stop.
pub fn run(info: &BootInfo) -> ! {
    let mut pattern = Pattern::Uniform;
    let mut wss = u64::MAX;
    let mut rate_mib = 0u64;
    let mut map_4k = false;
    let mut wait = false;
    let mut seed = 0x5eed;
    let mut tsc_khz = 0u64;
    let mut first = 0u64;
    for word in info.cmdline.raw.split_ascii_whitespace() {
        match word.split_once('=') {
            Some(("workload", name)) => match Pattern::parse(name) {
                Some(p) => pattern = p,
                None => panic!("unknown workload={name} (uniform, zipf, seq, idle)"),
            },
            Some(("wss", size)) => {
                wss = parse_size(size).unwrap_or_else(|| panic!("bad wss={size}"))
            }
            Some(("rate", mib)) => {
                rate_mib = mib.parse().unwrap_or_else(|_| panic!("bad rate={mib}"))
            }
            Some(("map", "4k")) => map_4k = true,
            Some(("map", "2m")) => map_4k = false,
            Some(("seed", s)) => seed = s.parse().unwrap_or(seed),
            Some(("tsc_khz", k)) => tsc_khz = k.parse().unwrap_or(0),
            Some(("first", addr)) => {
                first = parse_size(addr).unwrap_or_else(|| panic!("bad first={addr}"))
            }
            None if word == "wait" => wait = true,
            _ => {}
        }
    }
    // The arena starts at the first free RAM at or above `first=`.
    let ranges: alloc::vec::Vec<(u64, u64)> = frames::hand_off(KERNEL_RESERVE)
        .into_iter()
        .filter(|&(_, end)| end > first)
        .map(|(start, end)| (start.max(first), end))
        .collect();
    let mut arena = Arena::new(&ranges, wss / 4096);
    if arena.pages == 0 {
        panic!("no RAM left for the workload arena");
    }
    if map_4k && arena.map_4k().is_err() {
        panic!("out of frames mapping the arena with 4 KiB pages");
    }
    let cpus = percpu::online_count() as u64;
    let cycles_per_batch = (rate_mib > 0 && tsc_khz > 0).then(|| {
        // Pages per second per CPU, then TSC cycles per batch of them.
        let pages_per_cpu = (rate_mib * 256).div_ceil(cpus).max(1);
        tsc_khz * 1000 * BATCH / pages_per_cpu
    });
    if rate_mib > 0 && tsc_khz == 0 {
        crate::println!("workload: no tsc_khz= on the command line; rate={rate_mib} ignored");
    }
    let workload = WORKLOAD.call_once(|| Workload {
        pattern,
        arena,
        cpus,
        cycles_per_batch,
        seed,
    });
    if !wait {
        CONTROL.interval.store(1, Ordering::Release);
    }
    let (image_start, image_end) = crate::kernel_image();
    crate::record!(
        r#"{{"type":"workload","kind":"{}","pages":{},"map":"{}","cpus":{},"rate_mib":{},"control":{},"arena":{},"kernel_image":[{},{}]}}"#,
        pattern.name(),
        workload.arena.pages,
        if map_4k { "4k" } else { "2m" },
        cpus,
        rate_mib,
        virt_to_phys(&CONTROL as *const Control as u64),
        Runs(&workload.arena),
        image_start,
        image_end - image_start
    );
    crate::println!(
        "workload {}: {} pages ({} MiB, {} mappings) on {cpus} cpus, rate {} MiB/s (0: unlimited)",
        pattern.name(),
        workload.arena.pages,
        workload.arena.pages >> 8,
        if map_4k { "4 KiB" } else { "2 MiB" },
        rate_mib
    );
    let online = |&target: &usize| percpu::cpu(target).online.load(Ordering::Acquire);
    for target in (1..MAX_CPUS).filter(online) {
        if let Err(e) = smp::spawn_on(target, worker, target) {
            panic!("starting the workload on cpu {target}: {e:?}");
        }
    }
    worker(0);
    while CONTROL.done.load(Ordering::Acquire) < cpus {
        cpu::enable_and_halt();
    }
    exit(ExitCode::Success)
}

/// One CPU's writes, until the VMM sets `stop`.
fn worker(cpu_index: usize) {
    let Some(w) = WORKLOAD.get() else {
        return;
    };
    while CONTROL.interval.load(Ordering::Acquire) == 0 && CONTROL.stop.load(Ordering::Acquire) == 0
    {
        cpu::enable_and_halt();
    }
    let me = cpu_index as u64;
    let mut rng = Rng::new(w.seed ^ (me + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut n = 0u64;
    let mut next = msr::rdtsc();
    loop {
        if n.is_multiple_of(BATCH) {
            CONTROL.writes[cpu_index].store(n, Ordering::Relaxed);
            if CONTROL.stop.load(Ordering::Acquire) != 0 {
                break;
            }
            if w.pattern == Pattern::Idle {
                cpu::enable_and_halt();
                continue;
            }
            if let Some(cycles) = w.cycles_per_batch {
                next += cycles;
                let now = msr::rdtsc();
                if now > next + 100 * cycles {
                    // Far behind (the vCPU was not running): do not burst.
                    next = now;
                }
                while msr::rdtsc() < next {
                    core::hint::spin_loop();
                }
            }
        }
        let interval = CONTROL.interval.load(Ordering::Relaxed);
        let page = w.pattern.pick(&mut rng, w.arena.pages, me, w.cpus, n);
        // SAFETY: `page < arena.pages`, so the address is a mapped arena
        // page that only workload CPUs write, with plain stores.
        unsafe { core::ptr::write_volatile(w.arena.address(page) as *mut u64, interval) };
        n += 1;
    }
    CONTROL.done.fetch_add(1, Ordering::AcqRel);
}
