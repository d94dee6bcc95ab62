//! `mode=workload`: guest write workloads for the host's write watch
//! (docs/GUEST_ABI.md, "Workloads"). Every online CPU writes into an arena of
//! guest RAM that nothing else uses. Each write stores the current interval
//! number, which the VMM keeps in the control page, in the first eight bytes
//! of the page, so the VMM can tell from the page itself whether it was
//! written in an interval: the method of Linux's KVM `dirty_log_test`.
//!
//! With `check` (integrity checking, for migrations and snapshots) each
//! write also stores a value unique to it at bytes 8..16 of the page, and
//! the same value in a shadow table outside the arena, each CPU writing
//! only its own stripe of pages (page `p` belongs to CPU `p % cpus`, so a
//! page and its shadow entry always change together). Every page is
//! written once before the workload is announced. When told to stop, each
//! CPU compares its pages with the shadow table; CPU 0 reports the result
//! in a `workload_check` record and exits 5 if anything differs.
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

use crate::arch::x86_64::paging::{phys_to_virt, virt_to_phys};
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
    /// With `check`: the shadow table.
    shadow: Option<Shadow>,
}

static WORKLOAD: Once<Workload> = Once::new();

/// With `check`: one u64 per arena page, the value its last write stored.
struct Shadow {
    /// Guest-physical address of entry 0.
    phys: u64,
}

/// Per CPU, after `stop`: pages compared, how many differed, and the
/// first that did (arena index + 1; 0: none).
static CHECKED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static MISMATCHES: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static FIRST_BAD: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

impl Shadow {
    #[inline]
    fn entry(&self, page: u64) -> *mut u64 {
        phys_to_virt(self.phys + page * 8) as *mut u64
    }
}

/// The page CPU `me` of `cpus` writes in place of `page`: the one of its
/// own stripe in the same group of `cpus` pages.
#[inline]
fn own_page(page: u64, me: u64, cpus: u64, pages: u64) -> u64 {
    let own = page - page % cpus + me;
    if own < pages { own } else { me }
}

/// Carves the shadow table (8 bytes per page of an arena of at most
/// `limit` pages) from the start of the first range that holds it.
fn carve_shadow(ranges: &mut [(u64, u64)], limit: u64) -> Option<Shadow> {
    let total: u64 = ranges.iter().map(|&(s, e)| (e - s) / 4096).sum();
    let bytes = (limit.min(total) * 8).next_multiple_of(4096);
    let range = ranges.iter_mut().find(|(s, e)| *e - *s >= bytes + 4096)?;
    let phys = range.0.next_multiple_of(4096);
    range.0 = phys + bytes;
    Some(Shadow { phys })
}

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
    let mut check = false;
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
            None if word == "check" => check = true,
            _ => {}
        }
    }
    // The arena starts at the first free RAM at or above `first=`.
    let mut ranges: alloc::vec::Vec<(u64, u64)> = frames::hand_off(KERNEL_RESERVE)
        .into_iter()
        .filter(|&(_, end)| end > first)
        .map(|(start, end)| (start.max(first), end))
        .collect();
    let shadow = if check {
        match carve_shadow(&mut ranges, wss / 4096) {
            Some(shadow) => Some(shadow),
            None => panic!("no RAM for the workload's check table"),
        }
    } else {
        None
    };
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
        shadow,
    });
    let online = |&target: &usize| percpu::cpu(target).online.load(Ordering::Acquire);
    if workload.shadow.is_some() {
        // Every page holds its check value before anyone looks.
        for target in (1..MAX_CPUS).filter(online) {
            if let Err(e) = smp::spawn_on(target, fill, target) {
                panic!("starting the fill on cpu {target}: {e:?}");
            }
        }
        fill(0);
        while FILLED.load(Ordering::Acquire) < cpus {
            core::hint::spin_loop();
        }
    }
    if !wait {
        CONTROL.interval.store(1, Ordering::Release);
    }
    let (image_start, image_end) = crate::kernel_image();
    crate::record!(
        r#"{{"type":"workload","kind":"{}","pages":{},"map":"{}","cpus":{},"rate_mib":{},"check":{},"control":{},"arena":{},"kernel_image":[{},{}]}}"#,
        pattern.name(),
        workload.arena.pages,
        if map_4k { "4k" } else { "2m" },
        cpus,
        rate_mib,
        check,
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
    for target in (1..MAX_CPUS).filter(online) {
        if let Err(e) = smp::spawn_on(target, worker, target) {
            panic!("starting the workload on cpu {target}: {e:?}");
        }
    }
    worker(0);
    while CONTROL.done.load(Ordering::Acquire) < cpus {
        cpu::enable_and_halt();
    }
    if workload.shadow.is_some() {
        report_check(workload)
    }
    exit(ExitCode::Success)
}

/// CPUs done filling their stripes.
static FILLED: AtomicU64 = AtomicU64::new(0);

/// The check value of CPU `me`'s `n`th write: unique across CPUs and writes.
#[inline]
fn check_value(me: u64, n: u64) -> u64 {
    (me << 48) | (n + 1)
}

/// Writes page `page` (interval number, and with a shadow its check value).
#[inline]
fn write_page(w: &Workload, page: u64, interval: u64, value: u64) {
    let at = w.arena.address(page);
    // SAFETY: `page < arena.pages`, so the address is a mapped arena page
    // that only workload CPUs write, with plain stores; with a shadow, only
    // this CPU writes this page and its entry (its stripe).
    unsafe {
        core::ptr::write_volatile(at as *mut u64, interval);
        if let Some(shadow) = &w.shadow {
            core::ptr::write_volatile((at + 8) as *mut u64, value);
            core::ptr::write_volatile(shadow.entry(page), value);
        }
    }
}

/// With `check`: writes every page of this CPU's stripe once.
fn fill(cpu_index: usize) {
    let Some(w) = WORKLOAD.get() else {
        return;
    };
    let me = cpu_index as u64;
    let mut page = me;
    let mut n = 0;
    while page < w.arena.pages {
        write_page(w, page, 0, check_value(me, n));
        n += 1;
        page += w.cpus;
    }
    CONTROL.writes[cpu_index].store(n, Ordering::Relaxed);
    FILLED.fetch_add(1, Ordering::AcqRel);
}

/// With `check`, after `stop`: compares this CPU's stripe with the shadow.
fn verify(w: &Workload, shadow: &Shadow, cpu_index: usize) {
    let (mut checked, mut bad, mut first_bad) = (0u64, 0u64, 0u64);
    let mut page = cpu_index as u64;
    while page < w.arena.pages {
        // SAFETY: as in `write_page`; every writer has stopped.
        let (value, expected) = unsafe {
            (
                core::ptr::read_volatile((w.arena.address(page) + 8) as *const u64),
                core::ptr::read_volatile(shadow.entry(page)),
            )
        };
        if value != expected || value == 0 {
            bad += 1;
            if first_bad == 0 {
                first_bad = page + 1;
            }
        }
        checked += 1;
        page += w.cpus;
    }
    CHECKED[cpu_index].store(checked, Ordering::Relaxed);
    MISMATCHES[cpu_index].store(bad, Ordering::Relaxed);
    FIRST_BAD[cpu_index].store(first_bad, Ordering::Release);
}

/// CPU 0, once all have verified: the `workload_check` record and verdict.
fn report_check(w: &Workload) -> ! {
    let sum =
        |a: &[AtomicU64; MAX_CPUS]| -> u64 { a.iter().map(|c| c.load(Ordering::Acquire)).sum() };
    let (checked, bad) = (sum(&CHECKED), sum(&MISMATCHES));
    let first_bad = FIRST_BAD
        .iter()
        .map(|f| f.load(Ordering::Acquire))
        .filter(|&f| f != 0)
        .min()
        .map_or(0, |page| virt_to_phys(w.arena.address(page - 1)));
    crate::record!(
        r#"{{"type":"workload_check","pages":{},"checked":{checked},"mismatches":{bad},"first_bad":{first_bad}}}"#,
        w.arena.pages
    );
    crate::println!("workload check: {checked} pages compared, {bad} differ");
    if bad != 0 || checked != w.arena.pages {
        exit(ExitCode::CheckFailed)
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
    // With a shadow, the fill's writes came first (rounded up to a batch,
    // so the look at the control page comes at the first write).
    let mut n = CONTROL.writes[cpu_index]
        .load(Ordering::Relaxed)
        .next_multiple_of(BATCH);
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
                if now > next + 4 * cycles {
                    // Behind because the vCPU was not running (a host
                    // throttle, a pause): do not burst to catch up, as a
                    // CPU-bound writer could not either, or throttling
                    // would not slow it down.
                    next = now;
                }
                while msr::rdtsc() < next {
                    core::hint::spin_loop();
                }
            }
        }
        let interval = CONTROL.interval.load(Ordering::Relaxed);
        let mut page = w.pattern.pick(&mut rng, w.arena.pages, me, w.cpus, n);
        if w.shadow.is_some() {
            page = own_page(page, me, w.cpus, w.arena.pages);
        }
        write_page(w, page, interval, check_value(me, n));
        n += 1;
    }
    if let Some(shadow) = &w.shadow {
        verify(w, shadow, cpu_index);
    }
    CONTROL.done.fetch_add(1, Ordering::AcqRel);
}
